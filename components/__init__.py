"""KFP components: one module per pipeline step, each a thin binding over `softprompt.pipeline_steps`.

They are lightweight Python components (kfp.local's SubprocessRunner runs only those) whose `base_image`
is the project's own image, which has `softprompt` and kfp installed (so nothing is pip-installed at
run time).
"""

from softprompt.config import component_image

IMAGE = component_image()
