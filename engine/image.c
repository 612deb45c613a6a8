/* image.c: being written */
