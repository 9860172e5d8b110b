/* The L-BFGS kernels for any CPU (compiled with the base flags only). */
#define GD_SFX(name) name##_scalar
#include "lbfgs_kernels.inc"
