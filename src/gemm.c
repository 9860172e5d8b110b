#include "gdfast.h"
void gdfast_gemm_select(int isa) { (void)isa; }
