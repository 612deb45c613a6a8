/* cobra.h - the gst-cobra inference engine: Cobra (DINOv2 + SigLIP + Mamba) on the CPU.
 *
 * Load a model once, make one session per stream, give it an image, ask questions:
 *
 *   GError *err = NULL;
 *   CobraModel *model = cobra_model_load("cobra.gguf", &err);
 *   CobraSession *s = cobra_session_new(model, 0, &err);
 *   CobraImage img = { COBRA_FORMAT_RGB, w, h, { pixels }, { w * 3 } };
 *   cobra_session_set_image(s, &img, &err);
 *   CobraParams p; cobra_params_init(&p);
 *   char *answer = cobra_session_ask(s, "What is in the picture?", &p, on_token, NULL, &err);
 *
 * A model is immutable after loading and may be shared by any number of sessions and threads.
 * A session is used by one thread at a time; cobra_session_cancel() and cobra_session_resume() may
 * be called from any thread.
 * Errors are reported through GError (domain COBRA_ERROR) with messages that name the file, key,
 * tensor or value at fault.
 */
#ifndef COBRA_H
#define COBRA_H

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

#define COBRA_ERROR (cobra_error_quark())
GQuark cobra_error_quark(void);

typedef enum {
    COBRA_ERROR_IO,        /* a file could not be opened, read or mapped */
    COBRA_ERROR_FORMAT,    /* a model file is malformed, truncated or of the wrong architecture */
    COBRA_ERROR_INVALID,   /* an argument is out of range: image size, format, prompt, parameter */
    COBRA_ERROR_CANCELLED, /* cobra_session_cancel() stopped the request */
    COBRA_ERROR_STATE,     /* the call needs something first (e.g. an image before a question) */
} CobraErrorCode;

typedef struct CobraModel CobraModel;
typedef struct CobraSession CobraSession;

/* Pixel layouts accepted by cobra_session_set_image(), named as GStreamer names them. */
typedef enum {
    COBRA_FORMAT_RGB,  /* packed R,G,B bytes */
    COBRA_FORMAT_RGBA, /* packed R,G,B,A */
    COBRA_FORMAT_RGBx,
    COBRA_FORMAT_BGR,
    COBRA_FORMAT_BGRA,
    COBRA_FORMAT_BGRx,
    COBRA_FORMAT_ARGB,
    COBRA_FORMAT_xRGB,
    COBRA_FORMAT_ABGR,
    COBRA_FORMAT_xBGR,
    COBRA_FORMAT_I420, /* planar Y, U, V; chroma halved in both directions */
    COBRA_FORMAT_NV12, /* plane Y, plane of interleaved U,V; chroma halved in both directions */
    COBRA_FORMAT_GRAY8, /* one luma byte per pixel, shown as R = G = B */
    COBRA_FORMAT_YUY2,  /* packed Y0,U,Y1,V: chroma halved horizontally (4:2:2) */
    COBRA_FORMAT_UYVY,  /* packed U,Y0,V,Y1 (4:2:2) */
    COBRA_FORMAT_NV21,  /* as NV12 with V,U interleaved */
    COBRA_FORMAT_YV12,  /* as I420 with the V plane before the U plane */
} CobraPixelFormat;

/* YUV to RGB conversion for the YUV formats (ignored for RGB and GRAY8). */
typedef enum {
    COBRA_YUV_BT601_LIMITED, /* the default of SD video */
    COBRA_YUV_BT709_LIMITED, /* the default of HD video */
    COBRA_YUV_BT601_FULL,    /* JPEG */
    COBRA_YUV_BT709_FULL,
} CobraYuvMatrix;

/* Largest width or height cobra_session_set_image() accepts. */
#define COBRA_MAX_IMAGE_SIDE 16384

/* A frame in memory; the engine only reads it during cobra_session_set_image(). */
typedef struct {
    CobraPixelFormat format;
    int width, height;          /* pixels, >= 1 */
    const uint8_t *planes[3];   /* packed formats use planes[0] only */
    int strides[3];             /* bytes per row of each plane */
    CobraYuvMatrix yuv_matrix;
} CobraImage;

/* Decoding parameters; cobra_params_init() gives the reference's greedy decoding. */
typedef struct {
    int max_tokens;       /* new tokens at most, the stop token included (default 64) */
    float temperature;    /* 0 = greedy (default); > 0 samples */
    int top_k;            /* 0 = no limit (default) */
    float top_p;          /* 1 = no limit (default) */
    float repeat_penalty; /* CTRL-style penalty on tokens already generated; 1 = none (default) */
    uint64_t seed;        /* sampling seed (default 0); the same seed gives the same answer */
} CobraParams;

void cobra_params_init(CobraParams *params);

/* Called for each generated token with the text it completes (possibly "" while a UTF-8 sequence
 * is still incomplete). Return FALSE to stop generating (the answer so far is returned). */
typedef gboolean (*CobraTokenFunc)(const char *piece, int token_id, void *user_data);

/* Why an answer ended. */
typedef enum {
    COBRA_STOP_EOS,        /* the model generated its stop token */
    COBRA_STOP_MAX_TOKENS, /* params->max_tokens tokens were generated */
    COBRA_STOP_CALLBACK,   /* on_token returned FALSE */
} CobraStopReason;

/* Timings of the last request of a session, in seconds. */
typedef struct {
    double image_s;    /* resize + both towers + projector */
    double prefill_s;  /* image tokens (once per image) and prompt tokens through the LM */
    double decode_s;   /* generated tokens */
    int n_image_tokens, n_prompt_tokens, n_generated;
    int n_prompt_truncated; /* question tokens dropped to fit the context (0 normally) */
    CobraStopReason stop_reason; /* of the last answer (a cancelled ask returns NULL instead) */
} CobraTimings;

/* ---- model ---- */

typedef enum {
    COBRA_LOAD_DEFAULT = 0,
    /* Keep a shared read-only mapping of the file instead of a private copy: the pages are shared
     * by every process that maps the file, but a process dies of SIGBUS when the file is
     * truncated under it (`cp new.gguf model.gguf`); only safe when updates rename a new file
     * over the old one. */
    COBRA_LOAD_MMAP = 1 << 0,
} CobraLoadFlags;

/* Read and validate a model file written by tools/cobra_convert.py. NULL and an error on failure.
 * The weights are read into private memory, so the model keeps working when its file is
 * rewritten in place. Anything but a regular file (FIFO, directory, device) is refused without
 * blocking, and a file that changes while it is being read is an error. */
CobraModel *cobra_model_load(const char *path, GError **error);
CobraModel *cobra_model_load_with_flags(const char *path, CobraLoadFlags flags, GError **error);
void cobra_model_free(CobraModel *model);

/* Facts read from the file. */
int cobra_model_image_size(const CobraModel *model);   /* S: images are resized to S x S */
int cobra_model_n_image_tokens(const CobraModel *model);
int cobra_model_max_prompt_tokens(const CobraModel *model);
const char *cobra_model_name(const CobraModel *model);
const char *cobra_model_path(const CobraModel *model);

/* Text <-> token ids (no special handling of the prompt template). */
gboolean cobra_model_tokenize(const CobraModel *model, const char *text, GArray *ids /* int32 */,
                              GError **error);
char *cobra_model_detokenize(const CobraModel *model, const int32_t *ids, size_t n,
                             gboolean skip_special);

/* ---- session ---- */

/* n_threads: threads for this session's parallel work; 0 = all cores. */
CobraSession *cobra_session_new(CobraModel *model, int n_threads, GError **error);
void cobra_session_free(CobraSession *session);

/* Encode an image: resize, both towers, projector and the image-token prefill of the language
 * model. The resulting state is kept, so each question about it costs only its own tokens. */
gboolean cobra_session_set_image(CobraSession *session, const CobraImage *image, GError **error);

/* Ask a question about the current image; returns the answer stripped of surrounding white space
 * (g_free it), or NULL and an error. Generation stops at the stop token, at params->max_tokens or
 * when on_token returns FALSE (timings say which), or fails with COBRA_ERROR_CANCELLED when the
 * session is cancelled. The templated ids of the last question are kept, so asking the same
 * question again (about a new image) does not tokenise it again. */
char *cobra_session_ask(CobraSession *session, const char *question, const CobraParams *params,
                        CobraTokenFunc on_token, void *user_data, GError **error);

/* Limits of cobra_session_score_labels(). */
#define COBRA_MAX_LABELS 256
#define COBRA_MAX_LABEL_TOKENS 64

/* Score fixed answers instead of generating one: log_probs[i] (n_labels floats) gets the natural
 * log-probability that the answer to `question` about the current image begins with labels[i],
 * tokenised alone exactly as given (no leading space; no stop token). One prompt prefill serves
 * every label: each continues from a copy of the state after the prompt. Confidence is up to the
 * caller (e.g. a softmax over log_probs). Fails (INVALID) on an empty list, more than
 * COBRA_MAX_LABELS labels, an empty or blank label, invalid UTF-8, a label of more than
 * COBRA_MAX_LABEL_TOKENS tokens or with a token the model has no embedding for; STATE without an
 * image; CANCELLED when cancelled (checked before each label). Timings: prefill as for ask,
 * decode_s the time spent on the labels. */
gboolean cobra_session_score_labels(CobraSession *session, const char *question,
                                    const char *const *labels, int n_labels, float *log_probs,
                                    GError **error);

/* Thread-safe and sticky: the running set_image/ask/score_labels stops at its next check with
 * COBRA_ERROR_CANCELLED (checks come between stages, transformer blocks, Mamba layers, prefill
 * chunks and before every decode step, including the first, and before the call returns), and
 * every later call fails at once with COBRA_ERROR_CANCELLED until cobra_session_resume(). */
void cobra_session_cancel(CobraSession *session);
/* Clears a cancel; nothing else does. Call it before starting work that should be done. */
void cobra_session_resume(CobraSession *session);

void cobra_session_get_timings(const CobraSession *session, CobraTimings *timings);

/* Debugging and reference checks: called with every intermediate tensor as it is computed, under
 * the names of the reference dumps (resized_rgb, pixel_values_dino, dino_patches, projected,
 * prompt_ids, final_hidden, logits_last, conv_state, ssm_state, generated_ids, ...).
 * dtype is "u1", "i4" or "f4" (numpy's codes); shape has n_dims entries. */
typedef void (*CobraTensorFunc)(const char *name, const char *dtype, const int64_t *shape,
                                int n_dims, const void *data, void *user_data);
void cobra_session_set_tensor_callback(CobraSession *session, CobraTensorFunc func,
                                       void *user_data);

G_END_DECLS

#endif
