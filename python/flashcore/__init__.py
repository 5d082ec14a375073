"""flashcore: exact attention kernels for NVIDIA Hopper, with FlashAttention-2 compatible
functions (`flashcore.flash_attn_func` and friends). Host-memory arrays run on the CPU
reference backend."""

from ._flashcore import cuda_device_count
from .interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
    kvcache_error_flag,
)

__version__ = "0.1.0"
__all__ = [
    "cuda_device_count",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "kvcache_error_flag",
]
