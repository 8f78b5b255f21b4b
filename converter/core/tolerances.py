"""The default tolerances of a validation: a check passes when max |converted - reference| <= atol + rtol * scale,
scale being max |reference| (see :mod:`weightport.checks.report`).  A module of their own so that the command
line and the API state their defaults without importing the validation code."""

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
