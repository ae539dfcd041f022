"""A portrait photo as the talking face: `avatar.PhotoAvatar` (`photo_avatar`).

`portrait` checks an image and finds its face's landmarks (dlib, cached by content
hash); `rig` builds the movement fields and warps a frame; `mouth` paints the inside
of an open mouth. Motion timing, visemes and expressions are shared with `adapters.face`.
"""
