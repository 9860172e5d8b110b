/* The optimizer kernels for AVX-512 (built with -mavx512f/dq/vl and 512-bit
 * vectors preferred; -ffp-contract=off keeps them bitwise equal to the other
 * paths). */
#define GD_SFX(name) name##_avx512
#include "optim_kernels.inc"
