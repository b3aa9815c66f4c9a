"""Calibrated per-device latency models for kernels (see :mod:`kasrl.latency.model`)."""

from kasrl.latency.model import KERNEL, KINDS, LatencyModel, op_kind
from kasrl.latency.profile import ProfileError, ProfileMismatch, default_profile_path, fingerprint, load_profile, save_profile

__all__ = [
    "KERNEL",
    "KINDS",
    "LatencyModel",
    "op_kind",
    "ProfileError",
    "ProfileMismatch",
    "default_profile_path",
    "fingerprint",
    "load_profile",
    "save_profile",
]
