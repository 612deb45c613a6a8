/* fuzz_gguf.c - a hostile model file through the whole load: the input becomes an in-memory
 * file and goes through cobra_model_load, so the GGUF parser and every loader's checks (towers,
 * projector, Mamba, tokenizer, template) run on it. A file that loads is then used once (one small
 * image, one short question): whatever validation accepts must also be safe to run. */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "cobra.h"
#include "fuzz.h"

static void use_model(CobraModel *model)
{
    CobraSession *s = cobra_session_new(model, 1, NULL);
    if (!s)
        abort(); /* one thread is always a valid request */
    static const uint8_t pixels[2 * 3 * 3] = { 0, 64, 128, 255, 1, 2, 3, 4, 5, 200, 100, 50,
                                              7, 8, 9, 10, 11, 12 };
    CobraImage img = { COBRA_FORMAT_RGB, 3, 2, { pixels }, { 9 }, 0 };
    CobraParams params;
    cobra_params_init(&params);
    params.max_tokens = 3;
    if (cobra_session_set_image(s, &img, NULL))
        g_free(cobra_session_ask(s, "What is it?", &params, NULL, NULL, NULL));
    cobra_session_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_input_file(data, size, path, sizeof path);
    GError *error = NULL;
    CobraModel *model = cobra_model_load(path, &error);
    if (model) {
        use_model(model);
        cobra_model_free(model);
    } else if (!error || error->domain != COBRA_ERROR || !error->message[0]) {
        fprintf(stderr, "cobra_model_load failed without a COBRA_ERROR message\n");
        abort();
    }
    g_clear_error(&error);
    close(fd);
    return 0;
}
