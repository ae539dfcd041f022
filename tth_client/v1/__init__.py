"""Generated from protos/tth/v1 by scripts/gen_protos.py. Do not edit."""
