"""Test-wide settings.

Under CI (``CI`` set) hypothesis runs derandomized: the same examples every time, so a landing
never hangs on a draw nobody saw locally. Local runs draw fresh examples each time and keep
exploring; ``HYPOTHESIS_PROFILE=ci`` reproduces CI's draws.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
