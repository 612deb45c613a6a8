/* gstcobravlm.c: being written */
