/* tokenizer.c: being written */
