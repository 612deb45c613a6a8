/* cobra.c: being written */
