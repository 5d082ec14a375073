// FLASHCORE_HD marks small arithmetic shared by host code (tests, select) and kernels.
#pragma once

#if defined(__CUDACC__)
#define FLASHCORE_HD __host__ __device__
#else
#define FLASHCORE_HD
#endif
