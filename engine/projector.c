/* projector.c: being written */
