"""Shared Stable Diffusion machinery: backbones, attention capture, prompts and token alignment.

Knows no method: methods in ``methods/`` combine these parts. Importing this package is cheap;
torch and diffusers are imported by the submodules that need them.
"""
