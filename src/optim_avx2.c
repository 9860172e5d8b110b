/* The optimizer kernels for AVX2 (this file is built with -mavx2 -mfma; with
 * -ffp-contract=off no FMA is formed, so results match the scalar path). */
#define GD_SFX(name) name##_avx2
#include "optim_kernels.inc"
