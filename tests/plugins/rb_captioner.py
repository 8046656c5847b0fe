"""A test caption provider: appends a fixed phrase, as a BLIP plugin would add detail."""

import refbench


@refbench.hookimpl
def refbench_caption(expression, image, sample_id):
    return f"{expression} on a plain background"
