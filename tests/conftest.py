"""Shared test set-up: quiet TensorFlow; CPU only, with four CPU devices so
that the split tests have a 2x2 mesh. Set before JAX is first imported."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
