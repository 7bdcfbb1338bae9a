"""Root conftest: every test and every notebook kernel runs in the smoke profile.

Environment variables set here reach the notebook kernels that nbval starts.
"""

import os

os.environ.setdefault("CLR_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "agg")
# Kernels run next to pytest on a small machine: two threads each is plenty.
os.environ.setdefault("OMP_NUM_THREADS", "2")
