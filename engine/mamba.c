/* mamba.c: being written */
