/* vit.c: being written */
