"""A procedural talking head: the embedded profile's avatar, drawn with Pillow on the CPU.

`avatar.FaceAvatar` is the adapter (`face_avatar`); `visemes` maps phonemes to mouth
shapes; `looks` holds persona looks and emotion expressions; `render` draws;
`atlas` caches drawn layers and encoded frames; `animation` moves mouth, eyes and head.
"""
