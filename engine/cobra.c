/* cobra.c - the whole path: image -> towers -> projector -> Mamba -> text. (being written) */
#include "cobra.h"

G_DEFINE_QUARK(cobra-error-quark, cobra_error)
