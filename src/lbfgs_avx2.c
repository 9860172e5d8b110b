/* The L-BFGS kernels for AVX2 (built with -mavx2 -mfma; -ffp-contract=off
 * forms no FMA, so results match the scalar path bit for bit). */
#define GD_SFX(name) name##_avx2
#include "lbfgs_kernels.inc"
