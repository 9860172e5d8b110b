#include "gdfast.h"
void gdfast_optim_select(int isa) { (void)isa; }
