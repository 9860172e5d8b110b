/* The L-BFGS kernels for AVX-512 (512-bit vectors preferred; bitwise equal
 * to the other paths). */
#define GD_SFX(name) name##_avx512
#include "lbfgs_kernels.inc"
