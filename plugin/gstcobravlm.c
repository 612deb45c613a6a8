/* gst-cobra: the cobravlm element
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */

/**
 * SECTION:element-cobravlm
 * @title: cobravlm
 *
 * Runs the Cobra vision-language model on sampled video frames and attaches its answers to the
 * stream. Video passes through unchanged: no frame is modified, dropped or held.
 *
 * A frame is sampled every #GstCobraVlm:interval of running time (the first frame always). With
 * #GstCobraVlm:async (the default) the answer is computed on a worker thread and frames that
 * arrive while it is busy pass untouched and are counted in #GstCobraVlm:frames-skipped; with
 * async=false the streaming thread waits for every answer, so each sampled frame carries its own
 * caption (offline use).
 *
 * Each answer leaves three ways, all with the same fields (text, prompt, source-pts,
 * running-time, latency, n-tokens, seq and, for #GstCobraVlm::ask questions, request-id):
 *
 * * a #GstCustomMeta named "CobraCaptionMeta" on every outgoing buffer once an answer exists,
 *   with an extra boolean "fresh" that is %TRUE on the first buffer after a new answer;
 * * an element message named "cobravlm" (when #GstCobraVlm:post-messages is set);
 * * buffers on the request pad "text_src" (text/x-raw, format=utf8) whose bytes are the text,
 *   timestamped with the described frame's PTS, with GAP events in between.
 *
 * ## Example launch lines
 * |[
 * gst-launch-1.0 -m videotestsrc num-buffers=100 ! videoconvert ! \
 *     cobravlm model-file=cobra.gguf prompt="What is happening?" ! fakesink
 * ]| Prints a "cobravlm" message per caption.
 * |[
 * gst-launch-1.0 v4l2src ! videoconvert ! cobravlm name=vlm model-file=cobra.gguf ! \
 *     textoverlay name=ov wait-text=false ! videoconvert ! autovideosink  vlm.text_src ! ov.text_sink
 * ]| Shows the captions over a live camera.
 */

#include <string.h>

#include "cobra.h"
#include "gstcobravlm.h"

GST_DEBUG_CATEGORY_STATIC (gst_cobra_vlm_debug);
#define GST_CAT_DEFAULT gst_cobra_vlm_debug

#define DEFAULT_MODEL_FILE NULL
#define DEFAULT_PROMPT "Describe the image."
#define DEFAULT_INTERVAL GST_SECOND
#define DEFAULT_ASYNC TRUE
#define DEFAULT_MAX_TOKENS 32
#define DEFAULT_TEMPERATURE 0.0f
#define DEFAULT_TOP_K 0
#define DEFAULT_TOP_P 1.0f
#define DEFAULT_SEED 0
#define DEFAULT_N_THREADS 0
#define DEFAULT_POST_MESSAGES TRUE
#define DEFAULT_PARTIAL_MESSAGES FALSE

/* Upper bounds that keep a typo from asking for hours of decoding or thousands of threads. */
#define MAX_MAX_TOKENS 2048
#define MAX_TEMPERATURE 10.0f
#define MIN_TOP_P 0.001f              /* the engine needs top-p > 0 */
#define MAX_TOP_K 65536
#define MAX_N_THREADS 1024

enum
{
  PROP_0,
  PROP_MODEL_FILE,
  PROP_PROMPT,
  PROP_INTERVAL,
  PROP_ASYNC,
  PROP_MAX_TOKENS,
  PROP_TEMPERATURE,
  PROP_TOP_K,
  PROP_TOP_P,
  PROP_SEED,
  PROP_N_THREADS,
  PROP_POST_MESSAGES,
  PROP_PARTIAL_MESSAGES,
  PROP_FRAMES_ANALYZED,
  PROP_FRAMES_SKIPPED,
};

enum
{
  SIGNAL_ASK,
  LAST_SIGNAL
};

static guint gst_cobra_vlm_signals[LAST_SIGNAL];

#define VIDEO_CAPS GST_VIDEO_CAPS_MAKE ("{ RGB, RGBA, BGRx, BGRA, xRGB, I420, NV12 }")

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK, GST_PAD_ALWAYS, GST_STATIC_CAPS (VIDEO_CAPS));
static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS, GST_STATIC_CAPS (VIDEO_CAPS));
static GstStaticPadTemplate text_src_template = GST_STATIC_PAD_TEMPLATE ("text_src",
    GST_PAD_SRC, GST_PAD_REQUEST, GST_STATIC_CAPS ("text/x-raw, format=(string)utf8"));

/* A question for one frame: the prompt (request_id 0) or an `ask`. */
typedef struct
{
  gchar *question;
  guint request_id;
} Question;

/* One sampled frame and the questions to answer about it. */
typedef struct
{
  GstBuffer *copy;              /* element-owned copy of the frame */
  GstVideoFrame frame;          /* `copy`, mapped while the job lives */
  CobraImage image;             /* points into `frame` */
  GList *questions;             /* of Question: the prompt first, then the asks */
  CobraParams params;
  gboolean partial_messages;
  GstClockTime pts, running_time;
  gint64 arrival_us;            /* g_get_monotonic_time() when the frame arrived */
  guint epoch;                  /* results of jobs from before a flush are dropped */
} Job;

struct _GstCobraVlm
{
  GstVideoFilter parent;

  /* properties and counters, under the object lock */
  gchar *model_file;
  gchar *prompt;
  GstClockTime interval;
  gboolean async;
  guint max_tokens;
  gfloat temperature;
  guint top_k;
  gfloat top_p;
  guint64 seed;
  guint n_threads;
  gboolean post_messages;
  gboolean partial_messages;
  guint64 frames_analyzed, frames_skipped;
  GQueue asks;                  /* of Question, for the next sampled frame */
  guint next_request_id;

  /* loaded in NULL->READY, freed in READY->NULL */
  CobraModel *model;
  /* made in start(), freed in stop() */
  CobraSession *session;
  GThread *worker;              /* only with async */

  /* job slot and results, under `lock`; `cond` signals any change */
  GMutex lock;
  GCond cond;
  Job *job;                     /* waiting for the worker */
  gboolean busy;                /* a job runs (on the worker, or on the streaming thread) */
  gboolean cancelled;           /* the running job was cancelled on purpose */
  gboolean shutting_down;
  guint epoch;
  guint64 seq;
  GQueue done;                  /* of GstStructure results not yet published */

  /* the thread running jobs: the last over-long question warned about */
  gchar *truncated_question;

  /* streaming-thread state */
  CobraPixelFormat format;
  CobraYuvMatrix yuv_matrix;
  GstClockTime last_sampled;    /* running time of the last analysed frame */
  GstClockTime last_pts, last_duration;
  GstStructure *latest;         /* the result the meta carries */
  gboolean fresh;

  /* text_src: the streaming thread queues, the pad's task pushes, so a blocked text branch
   * (textoverlay waiting for video) never blocks the video; under `text_lock` */
  GMutex text_lock;
  GCond text_cond;
  GstPad *text_pad;
  GQueue text_queue;            /* of GstBuffer and GstEvent */
  gboolean text_flushing;
  gboolean text_started;        /* stream-start, caps and segment are queued */
};

#define gst_cobra_vlm_parent_class parent_class
G_DEFINE_TYPE (GstCobraVlm, gst_cobra_vlm, GST_TYPE_VIDEO_FILTER);
GST_ELEMENT_REGISTER_DEFINE (cobravlm, "cobravlm", GST_RANK_NONE, GST_TYPE_COBRA_VLM);

static void gst_cobra_vlm_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec);
static void gst_cobra_vlm_get_property (GObject * object, guint prop_id,
    GValue * value, GParamSpec * pspec);
static void gst_cobra_vlm_finalize (GObject * object);
static GstStateChangeReturn gst_cobra_vlm_change_state (GstElement * element,
    GstStateChange transition);
static GstPad *gst_cobra_vlm_request_new_pad (GstElement * element,
    GstPadTemplate * templ, const gchar * name, const GstCaps * caps);
static void gst_cobra_vlm_release_pad (GstElement * element, GstPad * pad);
static gboolean gst_cobra_vlm_start (GstBaseTransform * trans);
static gboolean gst_cobra_vlm_stop (GstBaseTransform * trans);
static gboolean gst_cobra_vlm_sink_event (GstBaseTransform * trans, GstEvent * event);
static GstFlowReturn gst_cobra_vlm_transform_ip (GstBaseTransform * trans, GstBuffer * buf);
static gboolean gst_cobra_vlm_set_info (GstVideoFilter * filter, GstCaps * incaps,
    GstVideoInfo * in_info, GstCaps * outcaps, GstVideoInfo * out_info);
static guint gst_cobra_vlm_ask (GstCobraVlm * self, const gchar * question);

static void
gst_cobra_vlm_class_init (GstCobraVlmClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);
  GstVideoFilterClass *filter_class = GST_VIDEO_FILTER_CLASS (klass);
  static const gchar *meta_tags[] = { NULL };

  GST_DEBUG_CATEGORY_INIT (gst_cobra_vlm_debug, "cobravlm", 0,
      "Cobra vision-language model");

  /* no tags: the caption stays on buffers through any conversion or scaling */
  gst_meta_register_custom (GST_COBRA_CAPTION_META_NAME, meta_tags, NULL, NULL, NULL);

  gobject_class->set_property = gst_cobra_vlm_set_property;
  gobject_class->get_property = gst_cobra_vlm_get_property;
  gobject_class->finalize = gst_cobra_vlm_finalize;

  g_object_class_install_property (gobject_class, PROP_MODEL_FILE,
      g_param_spec_string ("model-file", "Model file",
          "Cobra model file (GGUF, written by cobra_convert.py); loaded in NULL->READY",
          DEFAULT_MODEL_FILE,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_PROMPT,
      g_param_spec_string ("prompt", "Prompt",
          "Question asked about every sampled frame (non-empty UTF-8); "
          "a change applies from the next sampled frame", DEFAULT_PROMPT,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_INTERVAL,
      g_param_spec_uint64 ("interval", "Interval",
          "Running time between sampled frames in ns (0 = every frame)",
          0, G_MAXUINT64, DEFAULT_INTERVAL,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_ASYNC,
      g_param_spec_boolean ("async", "Asynchronous",
          "Infer on a worker thread and let frames pass meanwhile (live); FALSE blocks the "
          "stream until each sampled frame is answered (offline)", DEFAULT_ASYNC,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_MAX_TOKENS,
      g_param_spec_uint ("max-tokens", "Maximum tokens",
          "Most tokens generated per answer, the stop token included",
          1, MAX_MAX_TOKENS, DEFAULT_MAX_TOKENS,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_TEMPERATURE,
      g_param_spec_float ("temperature", "Temperature",
          "Sampling temperature (0 = greedy decoding)", 0.0f, MAX_TEMPERATURE,
          DEFAULT_TEMPERATURE,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_TOP_K,
      g_param_spec_uint ("top-k", "Top k",
          "Sample among the k most likely tokens (0 = no limit)", 0, MAX_TOP_K,
          DEFAULT_TOP_K,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_TOP_P,
      g_param_spec_float ("top-p", "Top p",
          "Sample among the most likely tokens of this total probability (1 = no limit)",
          MIN_TOP_P, 1.0f, DEFAULT_TOP_P,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_SEED,
      g_param_spec_uint64 ("seed", "Seed",
          "Sampling seed (the same seed gives the same answer)", 0, G_MAXUINT64,
          DEFAULT_SEED,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_N_THREADS,
      g_param_spec_uint ("n-threads", "Threads",
          "Threads used by the model (0 = all cores)", 0, MAX_N_THREADS,
          DEFAULT_N_THREADS,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_POST_MESSAGES,
      g_param_spec_boolean ("post-messages", "Post messages",
          "Post a \"cobravlm\" element message for every answer", DEFAULT_POST_MESSAGES,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_PARTIAL_MESSAGES,
      g_param_spec_boolean ("partial-messages", "Partial messages",
          "Post a \"cobravlm-partial\" element message for every generated token",
          DEFAULT_PARTIAL_MESSAGES,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_FRAMES_ANALYZED,
      g_param_spec_uint64 ("frames-analyzed", "Frames analysed",
          "Frames handed to the model since the element started", 0, G_MAXUINT64, 0,
          G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
  g_object_class_install_property (gobject_class, PROP_FRAMES_SKIPPED,
      g_param_spec_uint64 ("frames-skipped", "Frames skipped",
          "Frames due for analysis that passed un-analysed because the model was busy",
          0, G_MAXUINT64, 0, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));

  /**
   * GstCobraVlm::ask:
   * @cobravlm: the element
   * @question: a question (non-empty UTF-8)
   *
   * Asks @question once, about the next sampled frame, besides the prompt. Its result carries
   * the returned id as "request-id".
   *
   * Returns: the request id (> 0), or 0 when @question was rejected
   */
  gst_cobra_vlm_signals[SIGNAL_ASK] =
      g_signal_new_class_handler ("ask", G_TYPE_FROM_CLASS (klass),
      G_SIGNAL_RUN_LAST | G_SIGNAL_ACTION, G_CALLBACK (gst_cobra_vlm_ask), NULL, NULL, NULL,
      G_TYPE_UINT, 1, G_TYPE_STRING);

  gst_element_class_set_static_metadata (element_class, "Cobra vision-language model",
      "Filter/Analyzer/Video",
      "Captions and answers questions about video frames with the Cobra model",
      "gst-cobra developers");
  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_add_static_pad_template (element_class, &text_src_template);

  element_class->change_state = GST_DEBUG_FUNCPTR (gst_cobra_vlm_change_state);
  element_class->request_new_pad = GST_DEBUG_FUNCPTR (gst_cobra_vlm_request_new_pad);
  element_class->release_pad = GST_DEBUG_FUNCPTR (gst_cobra_vlm_release_pad);

  trans_class->start = GST_DEBUG_FUNCPTR (gst_cobra_vlm_start);
  trans_class->stop = GST_DEBUG_FUNCPTR (gst_cobra_vlm_stop);
  trans_class->sink_event = GST_DEBUG_FUNCPTR (gst_cobra_vlm_sink_event);
  /* Replaces GstVideoFilter's transform_ip, which maps frames for writing and so copies the
   * memory of every buffer another element still holds; this one only reads sampled frames. */
  trans_class->transform_ip = GST_DEBUG_FUNCPTR (gst_cobra_vlm_transform_ip);
  filter_class->set_info = GST_DEBUG_FUNCPTR (gst_cobra_vlm_set_info);
}

static void
gst_cobra_vlm_init (GstCobraVlm * self)
{
  self->prompt = g_strdup (DEFAULT_PROMPT);
  self->interval = DEFAULT_INTERVAL;
  self->async = DEFAULT_ASYNC;
  self->max_tokens = DEFAULT_MAX_TOKENS;
  self->temperature = DEFAULT_TEMPERATURE;
  self->top_k = DEFAULT_TOP_K;
  self->top_p = DEFAULT_TOP_P;
  self->seed = DEFAULT_SEED;
  self->n_threads = DEFAULT_N_THREADS;
  self->post_messages = DEFAULT_POST_MESSAGES;
  self->partial_messages = DEFAULT_PARTIAL_MESSAGES;
  g_queue_init (&self->asks);
  g_mutex_init (&self->lock);
  g_cond_init (&self->cond);
  g_queue_init (&self->done);
  g_mutex_init (&self->text_lock);
  g_cond_init (&self->text_cond);
  g_queue_init (&self->text_queue);
  self->last_sampled = GST_CLOCK_TIME_NONE;

  /* in place, and never a late frame dropped for QoS (GstVideoFilter enables it) */
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
  gst_base_transform_set_qos_enabled (GST_BASE_TRANSFORM (self), FALSE);
}

static void
question_free (Question * q)
{
  g_free (q->question);
  g_free (q);
}

static Question *
question_new (const gchar * text, guint request_id)
{
  Question *q = g_new (Question, 1);

  q->question = g_strdup (text);
  q->request_id = request_id;
  return q;
}

static void
text_queue_clear_locked (GstCobraVlm * self)
{
  g_queue_clear_full (&self->text_queue, (GDestroyNotify) gst_mini_object_unref);
}

static void
gst_cobra_vlm_finalize (GObject * object)
{
  GstCobraVlm *self = GST_COBRA_VLM (object);

  g_free (self->model_file);
  g_free (self->prompt);
  g_queue_clear_full (&self->asks, (GDestroyNotify) question_free);
  text_queue_clear_locked (self);
  /* only when the application disposed of the element without setting it to NULL */
  g_clear_pointer (&self->model, cobra_model_free);
  g_mutex_clear (&self->lock);
  g_cond_clear (&self->cond);
  g_mutex_clear (&self->text_lock);
  g_cond_clear (&self->text_cond);

  G_OBJECT_CLASS (parent_class)->finalize (object);
}

/* A question must be non-empty valid UTF-8 to be worth a model run. */
static gboolean
question_is_valid (const gchar * text)
{
  if (text == NULL || !g_utf8_validate (text, -1, NULL))
    return FALSE;
  for (; *text; text++)
    if (!g_ascii_isspace (*text))
      return TRUE;
  return FALSE;
}

static void
gst_cobra_vlm_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstCobraVlm *self = GST_COBRA_VLM (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL_FILE:
      g_free (self->model_file);
      self->model_file = g_value_dup_string (value);
      break;
    case PROP_PROMPT:{
      const gchar *prompt = g_value_get_string (value);

      if (question_is_valid (prompt)) {
        g_free (self->prompt);
        self->prompt = g_strdup (prompt);
      } else {
        g_warning ("%s: the prompt must be non-empty UTF-8 text; keeping \"%s\"",
            GST_OBJECT_NAME (self), self->prompt);
      }
      break;
    }
    case PROP_INTERVAL:
      self->interval = g_value_get_uint64 (value);
      break;
    case PROP_ASYNC:
      self->async = g_value_get_boolean (value);
      break;
    case PROP_MAX_TOKENS:
      self->max_tokens = g_value_get_uint (value);
      break;
    case PROP_TEMPERATURE:
      self->temperature = g_value_get_float (value);
      break;
    case PROP_TOP_K:
      self->top_k = g_value_get_uint (value);
      break;
    case PROP_TOP_P:
      self->top_p = g_value_get_float (value);
      break;
    case PROP_SEED:
      self->seed = g_value_get_uint64 (value);
      break;
    case PROP_N_THREADS:
      self->n_threads = g_value_get_uint (value);
      break;
    case PROP_POST_MESSAGES:
      self->post_messages = g_value_get_boolean (value);
      break;
    case PROP_PARTIAL_MESSAGES:
      self->partial_messages = g_value_get_boolean (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_cobra_vlm_get_property (GObject * object, guint prop_id, GValue * value,
    GParamSpec * pspec)
{
  GstCobraVlm *self = GST_COBRA_VLM (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL_FILE:
      g_value_set_string (value, self->model_file);
      break;
    case PROP_PROMPT:
      g_value_set_string (value, self->prompt);
      break;
    case PROP_INTERVAL:
      g_value_set_uint64 (value, self->interval);
      break;
    case PROP_ASYNC:
      g_value_set_boolean (value, self->async);
      break;
    case PROP_MAX_TOKENS:
      g_value_set_uint (value, self->max_tokens);
      break;
    case PROP_TEMPERATURE:
      g_value_set_float (value, self->temperature);
      break;
    case PROP_TOP_K:
      g_value_set_uint (value, self->top_k);
      break;
    case PROP_TOP_P:
      g_value_set_float (value, self->top_p);
      break;
    case PROP_SEED:
      g_value_set_uint64 (value, self->seed);
      break;
    case PROP_N_THREADS:
      g_value_set_uint (value, self->n_threads);
      break;
    case PROP_POST_MESSAGES:
      g_value_set_boolean (value, self->post_messages);
      break;
    case PROP_PARTIAL_MESSAGES:
      g_value_set_boolean (value, self->partial_messages);
      break;
    case PROP_FRAMES_ANALYZED:
      g_value_set_uint64 (value, self->frames_analyzed);
      break;
    case PROP_FRAMES_SKIPPED:
      g_value_set_uint64 (value, self->frames_skipped);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static guint
gst_cobra_vlm_ask (GstCobraVlm * self, const gchar * question)
{
  guint id;

  if (!question_is_valid (question)) {
    g_warning ("%s: ask: the question must be non-empty UTF-8 text", GST_OBJECT_NAME (self));
    return 0;
  }
  GST_OBJECT_LOCK (self);
  id = ++self->next_request_id;
  if (id == 0)                  /* 0 means rejected */
    id = ++self->next_request_id;
  g_queue_push_tail (&self->asks, question_new (question, id));
  GST_OBJECT_UNLOCK (self);
  GST_DEBUG_OBJECT (self, "request %u: %s", id, question);
  return id;
}

/* ---- model and session ---- */

/* Loads model-file unless it is the one already loaded. */
static gboolean
gst_cobra_vlm_load_model (GstCobraVlm * self)
{
  GError *err = NULL;
  CobraModel *model;
  gchar *path;

  GST_OBJECT_LOCK (self);
  path = g_strdup (self->model_file);
  GST_OBJECT_UNLOCK (self);

  if (path == NULL) {
    GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND, ("No model file set."),
        ("Set the model-file property to a file written by cobra_convert.py."));
    return FALSE;
  }
  if (self->model && g_strcmp0 (cobra_model_path (self->model), path) == 0) {
    g_free (path);
    return TRUE;
  }

  model = cobra_model_load (path, &err);
  if (model == NULL) {
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ,
        ("Could not load the model file \"%s\": %s", path, err->message), (NULL));
    g_error_free (err);
    g_free (path);
    return FALSE;
  }
  GST_INFO_OBJECT (self, "loaded %s (%s, %d px)", path, cobra_model_name (model),
      cobra_model_image_size (model));
  g_clear_pointer (&self->model, cobra_model_free);
  self->model = model;
  g_free (path);
  return TRUE;
}

/* ---- results ---- */

static gboolean
copy_field (GQuark field, const GValue * value, gpointer dest)
{
  gst_structure_id_set_value (dest, field, value);
  return TRUE;
}

/* Puts a result's fields, and `fresh`, in a CobraCaptionMeta on `buf` (writable). */
static void
add_caption_meta (GstBuffer * buf, const GstStructure * result, gboolean fresh)
{
  GstCustomMeta *meta = gst_buffer_add_custom_meta (buf, GST_COBRA_CAPTION_META_NAME);
  GstStructure *s = gst_custom_meta_get_structure (meta);

  gst_structure_foreach (result, copy_field, s);
  gst_structure_set (s, "fresh", G_TYPE_BOOLEAN, fresh, NULL);
}

static void
post_structure (GstCobraVlm * self, GstStructure * s)
{
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

typedef struct
{
  GstCobraVlm *self;
  const Job *job;
  const Question *question;
  GString *text;
} Partial;

static gboolean
on_token (const char *piece, int token_id, void *user_data)
{
  Partial *p = user_data;
  GstStructure *s;

  g_string_append (p->text, piece);
  s = gst_structure_new ("cobravlm-partial",
      "text", G_TYPE_STRING, p->text->str,
      "piece", G_TYPE_STRING, piece,
      "token-id", G_TYPE_INT, token_id,
      "prompt", G_TYPE_STRING, p->question->question,
      "source-pts", G_TYPE_UINT64, p->job->pts, NULL);
  if (p->question->request_id)
    gst_structure_set (s, "request-id", G_TYPE_UINT, p->question->request_id, NULL);
  post_structure (p->self, s);
  return TRUE;
}

/* ---- jobs ---- */

static CobraPixelFormat
cobra_format_from_video (GstVideoFormat format)
{
  switch (format) {
    case GST_VIDEO_FORMAT_RGB:
      return COBRA_FORMAT_RGB;
    case GST_VIDEO_FORMAT_RGBA:
      return COBRA_FORMAT_RGBA;
    case GST_VIDEO_FORMAT_BGRx:
      return COBRA_FORMAT_BGRx;
    case GST_VIDEO_FORMAT_BGRA:
      return COBRA_FORMAT_BGRA;
    case GST_VIDEO_FORMAT_xRGB:
      return COBRA_FORMAT_xRGB;
    case GST_VIDEO_FORMAT_I420:
      return COBRA_FORMAT_I420;
    default:
      g_assert (format == GST_VIDEO_FORMAT_NV12);       /* the caps allow nothing else */
      return COBRA_FORMAT_NV12;
  }
}

/* The engine knows BT.601 and BT.709; other matrices get the closer of the two by size. */
static CobraYuvMatrix
cobra_matrix_from_video (const GstVideoInfo * info)
{
  const GstVideoColorimetry *c = &GST_VIDEO_INFO_COLORIMETRY (info);
  gboolean full = c->range == GST_VIDEO_COLOR_RANGE_0_255;
  gboolean bt709;

  switch (c->matrix) {
    case GST_VIDEO_COLOR_MATRIX_BT601:
      bt709 = FALSE;
      break;
    case GST_VIDEO_COLOR_MATRIX_BT709:
      bt709 = TRUE;
      break;
    default:
      bt709 = GST_VIDEO_INFO_HEIGHT (info) >= 720;
      break;
  }
  if (bt709)
    return full ? COBRA_YUV_BT709_FULL : COBRA_YUV_BT709_LIMITED;
  return full ? COBRA_YUV_BT601_FULL : COBRA_YUV_BT601_LIMITED;
}

static void
job_free (Job * job)
{
  gst_video_frame_unmap (&job->frame);
  gst_buffer_unref (job->copy);
  g_list_free_full (job->questions, (GDestroyNotify) question_free);
  g_free (job);
}

/* Copies the frame (planes with their strides) and takes the prompt, the pending asks and the
 * decoding properties as they are now. Counts the frame as analysed. */
static Job *
job_new (GstCobraVlm * self, GstBuffer * buf, GstClockTime running_time, gint64 arrival_us)
{
  GstVideoInfo *info = &GST_VIDEO_FILTER (self)->in_info;
  GstVideoFrame in;
  Job *job;

  if (!gst_video_frame_map (&in, info, buf, GST_MAP_READ)) {
    GST_ELEMENT_WARNING (self, STREAM, FAILED, ("Could not read a video frame."),
        ("buffer %" GST_PTR_FORMAT " does not match the caps", buf));
    return NULL;
  }
  job = g_new0 (Job, 1);
  job->copy = gst_buffer_new_allocate (NULL, GST_VIDEO_INFO_SIZE (info), NULL);
  gst_video_frame_map (&job->frame, info, job->copy, GST_MAP_READWRITE);
  gst_video_frame_copy (&job->frame, &in);
  gst_video_frame_unmap (&in);

  job->image.format = self->format;
  job->image.width = GST_VIDEO_INFO_WIDTH (info);
  job->image.height = GST_VIDEO_INFO_HEIGHT (info);
  for (guint i = 0; i < GST_VIDEO_FRAME_N_PLANES (&job->frame); i++) {
    job->image.planes[i] = GST_VIDEO_FRAME_PLANE_DATA (&job->frame, i);
    job->image.strides[i] = GST_VIDEO_FRAME_PLANE_STRIDE (&job->frame, i);
  }
  job->image.yuv_matrix = self->yuv_matrix;
  job->pts = GST_BUFFER_PTS (buf);
  job->running_time = running_time;
  job->arrival_us = arrival_us;

  cobra_params_init (&job->params);
  GST_OBJECT_LOCK (self);
  job->params.max_tokens = self->max_tokens;
  job->params.temperature = self->temperature;
  job->params.top_k = self->top_k;
  job->params.top_p = self->top_p;
  job->params.seed = self->seed;
  job->partial_messages = self->partial_messages;
  job->questions = g_list_prepend (self->asks.head, question_new (self->prompt, 0));
  g_queue_init (&self->asks);
  self->frames_analyzed++;
  GST_OBJECT_UNLOCK (self);
  return job;
}

/* cobra_session_cancel() stays armed until the call it stops returns, so a cancel aimed at a
 * job that had just finished stops the next call instead: such a call is retried. Clears the
 * error and returns TRUE for a retry. */
static gboolean
stale_cancel (GstCobraVlm * self, GError ** err)
{
  gboolean stale;

  if (!g_error_matches (*err, COBRA_ERROR, COBRA_ERROR_CANCELLED))
    return FALSE;
  g_mutex_lock (&self->lock);
  stale = !self->cancelled;
  g_mutex_unlock (&self->lock);
  if (stale)
    g_clear_error (err);
  return stale;
}

/* A cancel is expected; anything else is worth a warning, but the stream goes on. */
static void
report_failure (GstCobraVlm * self, const Job * job, GError * err)
{
  if (g_error_matches (err, COBRA_ERROR, COBRA_ERROR_CANCELLED))
    GST_DEBUG_OBJECT (self, "generation cancelled");
  else
    GST_ELEMENT_WARNING (self, LIBRARY, FAILED,
        ("Could not analyse the frame at %" GST_TIME_FORMAT ": %s",
            GST_TIME_ARGS (job->pts), err->message), ("%s", err->message));
  g_error_free (err);
}

/* Runs the model on a job (without `lock`): results go to `done` unless a flush came first. */
static void
run_job (GstCobraVlm * self, const Job * job)
{
  GError *err = NULL;
  gboolean ok;

  do
    ok = cobra_session_set_image (self->session, &job->image, &err);
  while (!ok && stale_cancel (self, &err));
  if (!ok) {
    report_failure (self, job, err);
    return;
  }

  for (GList *l = job->questions; l; l = l->next) {
    const Question *q = l->data;
    Partial partial = { self, job, q, g_string_new (NULL) };
    CobraTimings timings;
    GstStructure *result;
    gboolean keep, post;
    char *answer;

    do {
      g_string_truncate (partial.text, 0);
      answer = cobra_session_ask (self->session, q->question, &job->params,
          job->partial_messages ? on_token : NULL, &partial, &err);
    } while (answer == NULL && stale_cancel (self, &err));
    g_string_free (partial.text, TRUE);
    if (answer == NULL) {
      gboolean cancelled = g_error_matches (err, COBRA_ERROR, COBRA_ERROR_CANCELLED);

      report_failure (self, job, err);
      if (cancelled)
        return;
      continue;
    }

    cobra_session_get_timings (self->session, &timings);
    if (timings.n_prompt_truncated > 0
        && g_strcmp0 (self->truncated_question, q->question) != 0) {
      GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS,
          ("The question is too long for the model: %d of its tokens were dropped.",
              timings.n_prompt_truncated), ("question: %s", q->question));
      g_free (self->truncated_question);
      self->truncated_question = g_strdup (q->question);
    }
    result = gst_structure_new ("cobravlm",
        "text", G_TYPE_STRING, answer,
        "prompt", G_TYPE_STRING, q->question,
        "source-pts", G_TYPE_UINT64, job->pts,
        "running-time", G_TYPE_UINT64, job->running_time,
        "latency", G_TYPE_UINT64,
        (guint64) (g_get_monotonic_time () - job->arrival_us) * GST_USECOND,
        "n-tokens", G_TYPE_UINT, (guint) timings.n_generated, NULL);
    if (q->request_id)
      gst_structure_set (result, "request-id", G_TYPE_UINT, q->request_id, NULL);
    g_free (answer);

    g_mutex_lock (&self->lock);
    keep = job->epoch == self->epoch;
    if (keep) {
      gst_structure_set (result, "seq", G_TYPE_UINT64, ++self->seq, NULL);
      g_queue_push_tail (&self->done, gst_structure_copy (result));
    }
    g_mutex_unlock (&self->lock);

    GST_OBJECT_LOCK (self);
    post = self->post_messages;
    GST_OBJECT_UNLOCK (self);
    GST_DEBUG_OBJECT (self, "%s result %" GST_PTR_FORMAT, keep ? "new" : "flushed", result);
    if (keep && post)
      post_structure (self, result);
    else
      gst_structure_free (result);
  }
}

/* Runs a job on the calling thread; called with `lock`, which is released meanwhile. */
static void
run_job_locked (GstCobraVlm * self, Job * job)
{
  self->busy = TRUE;
  self->cancelled = FALSE;
  /* The engine's cancel is sticky now: clear the last job's before starting this one. */
  cobra_session_resume (self->session);
  g_mutex_unlock (&self->lock);
  run_job (self, job);
  job_free (job);
  g_mutex_lock (&self->lock);
  self->busy = FALSE;
  g_cond_broadcast (&self->cond);
}

/* Called with `lock`: stops the running generation and drops any waiting job. */
static void
cancel_locked (GstCobraVlm * self)
{
  g_clear_pointer (&self->job, job_free);
  if (self->busy) {
    self->cancelled = TRUE;
    cobra_session_cancel (self->session);
  }
  g_cond_broadcast (&self->cond);
}

static gpointer
worker_main (gpointer data)
{
  GstCobraVlm *self = data;

  g_mutex_lock (&self->lock);
  for (;;) {
    Job *job;

    while (self->job == NULL && !self->shutting_down)
      g_cond_wait (&self->cond, &self->lock);
    if (self->shutting_down)
      break;
    job = self->job;
    self->job = NULL;
    run_job_locked (self, job);
  }
  g_mutex_unlock (&self->lock);
  return NULL;
}

/* ---- text_src ---- */

/* Queues a buffer or event for text_src (streaming thread only). The first item is preceded by
 * stream-start, caps and the video segment; consecutive GAPs merge into one. */
static void
text_queue_push (GstCobraVlm * self, gpointer item)
{
  GstMiniObject *tail;

  g_mutex_lock (&self->text_lock);
  if (self->text_pad == NULL || self->text_flushing)
    goto drop;
  if (!self->text_started) {
    gchar *stream_id;

    if (GST_IS_EVENT (item) && GST_EVENT_TYPE (item) == GST_EVENT_SEGMENT)
      goto drop;                /* the start below sends the current one */
    stream_id = gst_pad_create_stream_id (self->text_pad, GST_ELEMENT (self), "text");
    g_queue_push_tail (&self->text_queue, gst_event_new_stream_start (stream_id));
    g_free (stream_id);
    g_queue_push_tail (&self->text_queue, gst_event_new_caps (gst_static_pad_template_get_caps
            (&text_src_template)));
    g_queue_push_tail (&self->text_queue,
        gst_event_new_segment (&GST_BASE_TRANSFORM (self)->segment));
    self->text_started = TRUE;
  }

  tail = g_queue_peek_tail (&self->text_queue);
  if (GST_IS_EVENT (item) && GST_EVENT_TYPE (item) == GST_EVENT_GAP
      && tail && GST_IS_EVENT (tail) && GST_EVENT_TYPE (tail) == GST_EVENT_GAP) {
    GstClockTime start, duration, ts, dur, end;

    gst_event_parse_gap (GST_EVENT (tail), &start, &duration);
    gst_event_parse_gap (GST_EVENT (item), &ts, &dur);
    end = GST_CLOCK_TIME_IS_VALID (dur) ? ts + dur : ts;
    if (end > start) {
      gst_event_unref (GST_EVENT (g_queue_pop_tail (&self->text_queue)));
      gst_event_unref (GST_EVENT (item));
      item = gst_event_new_gap (start, end - start);
    }
  }
  g_queue_push_tail (&self->text_queue, item);
  g_cond_signal (&self->text_cond);
  g_mutex_unlock (&self->text_lock);
  return;

drop:
  g_mutex_unlock (&self->text_lock);
  gst_mini_object_unref (item);
}

static void
text_loop (GstPad * pad)
{
  GstCobraVlm *self = GST_COBRA_VLM (GST_PAD_PARENT (pad));
  gpointer item;
  GstFlowReturn ret;

  g_mutex_lock (&self->text_lock);
  while (g_queue_is_empty (&self->text_queue) && !self->text_flushing)
    g_cond_wait (&self->text_cond, &self->text_lock);
  if (self->text_flushing) {
    g_mutex_unlock (&self->text_lock);
    gst_pad_pause_task (pad);
    return;
  }
  item = g_queue_pop_head (&self->text_queue);
  g_mutex_unlock (&self->text_lock);

  if (GST_IS_BUFFER (item)) {
    ret = gst_pad_push (pad, item);
    if (ret != GST_FLOW_OK && ret != GST_FLOW_NOT_LINKED && ret != GST_FLOW_FLUSHING)
      GST_DEBUG_OBJECT (self, "text_src: %s", gst_flow_get_name (ret));
  } else {
    gst_pad_push_event (pad, item);
  }
}

static gboolean
text_activate_mode (GstPad * pad, GstObject * parent, GstPadMode mode, gboolean active)
{
  GstCobraVlm *self = GST_COBRA_VLM (parent);

  if (mode != GST_PAD_MODE_PUSH)
    return FALSE;
  g_mutex_lock (&self->text_lock);
  self->text_flushing = !active;
  if (!active) {
    text_queue_clear_locked (self);
    self->text_started = FALSE;
    g_cond_signal (&self->text_cond);
  }
  g_mutex_unlock (&self->text_lock);
  if (active)
    return gst_pad_start_task (pad, (GstTaskFunction) text_loop, pad, NULL);
  return gst_pad_stop_task (pad);
}

/* Forwards a flush to text_src: the task stops (and its queue empties) until the flush ends. */
static void
text_flush (GstCobraVlm * self, GstEvent * event)
{
  gboolean start = GST_EVENT_TYPE (event) == GST_EVENT_FLUSH_START;
  GstPad *pad;

  g_mutex_lock (&self->text_lock);
  pad = self->text_pad ? gst_object_ref (self->text_pad) : NULL;
  self->text_flushing = start;
  text_queue_clear_locked (self);
  /* the queue may have held the stream start; sending it again is harmless */
  self->text_started = FALSE;
  g_cond_signal (&self->text_cond);
  g_mutex_unlock (&self->text_lock);
  if (pad == NULL)
    return;

  gst_pad_push_event (pad, gst_event_ref (event));
  if (start)
    gst_pad_pause_task (pad);
  else
    gst_pad_start_task (pad, (GstTaskFunction) text_loop, pad, NULL);
  gst_object_unref (pad);
}

static GstPad *
gst_cobra_vlm_request_new_pad (GstElement * element, GstPadTemplate * templ,
    const gchar * name, const GstCaps * caps)
{
  GstCobraVlm *self = GST_COBRA_VLM (element);
  GstPad *pad;

  g_mutex_lock (&self->text_lock);
  if (self->text_pad) {
    g_mutex_unlock (&self->text_lock);
    GST_WARNING_OBJECT (self, "there is only one text_src pad");
    return NULL;
  }
  pad = gst_pad_new_from_template (templ, "text_src");
  gst_pad_set_activatemode_function (pad, text_activate_mode);
  gst_pad_use_fixed_caps (pad);
  self->text_pad = pad;
  self->text_started = FALSE;
  g_mutex_unlock (&self->text_lock);

  /* activates it too when the element is already running */
  gst_element_add_pad (element, pad);
  return pad;
}

static void
gst_cobra_vlm_release_pad (GstElement * element, GstPad * pad)
{
  GstCobraVlm *self = GST_COBRA_VLM (element);

  g_mutex_lock (&self->text_lock);
  if (pad == self->text_pad)
    self->text_pad = NULL;
  g_mutex_unlock (&self->text_lock);
  gst_pad_set_active (pad, FALSE);
  gst_element_remove_pad (element, pad);
}

/* ---- streaming ---- */

/* Hands the results finished since the last call to the meta and text_src. `pts` and
 * `duration` are those of the video buffer being pushed now: a text buffer lasts from the frame
 * it describes until one interval after now, so textoverlay shows late (async) captions too. */
static gboolean
publish_results (GstCobraVlm * self, GstClockTime pts, GstClockTime duration)
{
  GQueue results = G_QUEUE_INIT;
  GstStructure *result;
  GstClockTime hold;

  g_mutex_lock (&self->lock);
  results = self->done;
  g_queue_init (&self->done);
  g_mutex_unlock (&self->lock);
  if (g_queue_is_empty (&results))
    return FALSE;

  GST_OBJECT_LOCK (self);
  hold = self->interval;
  GST_OBJECT_UNLOCK (self);
  if (GST_CLOCK_TIME_IS_VALID (duration))
    hold = MAX (hold, duration);

  while ((result = g_queue_pop_head (&results))) {
    const gchar *text = gst_structure_get_string (result, "text");
    gsize len = strlen (text);
    GstBuffer *buf = len ? gst_buffer_new_memdup (text, len) : gst_buffer_new ();
    GstClockTime src = GST_CLOCK_TIME_NONE;

    gst_structure_get_uint64 (result, "source-pts", &src);
    GST_BUFFER_PTS (buf) = src;
    /* (a huge interval leaves the duration unknown rather than overflowing) */
    if (GST_CLOCK_TIME_IS_VALID (src) && GST_CLOCK_TIME_IS_VALID (pts) && pts >= src && hold
        && hold < GST_CLOCK_TIME_NONE - (pts - src))
      GST_BUFFER_DURATION (buf) = pts - src + hold;
    add_caption_meta (buf, result, TRUE);
    text_queue_push (self, buf);

    if (self->latest)
      gst_structure_free (self->latest);
    self->latest = result;
    self->fresh = TRUE;
  }
  return TRUE;
}

static gboolean
sample_due (GstCobraVlm * self, GstClockTime running_time)
{
  GstClockTime interval;

  if (!GST_CLOCK_TIME_IS_VALID (running_time) || !GST_CLOCK_TIME_IS_VALID (self->last_sampled))
    return TRUE;
  if (running_time < self->last_sampled)        /* time went back: a new segment */
    return TRUE;
  GST_OBJECT_LOCK (self);
  interval = self->interval;
  GST_OBJECT_UNLOCK (self);
  return running_time - self->last_sampled >= interval;
}

static GstFlowReturn
gst_cobra_vlm_transform_ip (GstBaseTransform * trans, GstBuffer * buf)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);
  GstClockTime pts = GST_BUFFER_PTS (buf), duration = GST_BUFFER_DURATION (buf);
  GstClockTime running_time = gst_segment_to_running_time (&trans->segment, GST_FORMAT_TIME, pts);
  gint64 arrival_us = g_get_monotonic_time ();
  gboolean published, stopping, busy;
  Job *job;

  if (G_UNLIKELY (!GST_VIDEO_FILTER (self)->negotiated))
    return GST_FLOW_NOT_NEGOTIATED;

  self->last_pts = pts;
  self->last_duration = duration;
  published = publish_results (self, pts, duration);

  if (sample_due (self, running_time)) {
    g_mutex_lock (&self->lock);
    stopping = self->shutting_down;
    busy = self->busy || self->job != NULL;
    g_mutex_unlock (&self->lock);

    if (stopping) {
      GST_DEBUG_OBJECT (self, "stopping: frame at %" GST_TIME_FORMAT " not analysed",
          GST_TIME_ARGS (pts));
    } else if (busy) {
      GST_OBJECT_LOCK (self);
      self->frames_skipped++;
      GST_OBJECT_UNLOCK (self);
    } else if ((job = job_new (self, buf, running_time, arrival_us))) {
      self->last_sampled = running_time;
      g_mutex_lock (&self->lock);
      job->epoch = self->epoch;
      if (self->worker) {
        self->job = job;
        g_cond_broadcast (&self->cond);
      } else {
        run_job_locked (self, job);
      }
      g_mutex_unlock (&self->lock);
      if (self->worker == NULL)
        published |= publish_results (self, pts, duration);
    }
  }

  if (self->latest) {
    add_caption_meta (buf, self->latest, self->fresh);
    self->fresh = FALSE;
  }
  if (!published && GST_CLOCK_TIME_IS_VALID (pts))
    text_queue_push (self, gst_event_new_gap (pts, duration));
  return GST_FLOW_OK;
}

static gboolean
gst_cobra_vlm_sink_event (GstBaseTransform * trans, GstEvent * event)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);
  gboolean ret;

  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_FLUSH_START:
      g_mutex_lock (&self->lock);
      self->epoch++;
      cancel_locked (self);
      g_queue_clear_full (&self->done, (GDestroyNotify) gst_structure_free);
      g_mutex_unlock (&self->lock);
      text_flush (self, event);
      break;
    case GST_EVENT_FLUSH_STOP:
      self->last_sampled = GST_CLOCK_TIME_NONE;
      g_clear_pointer (&self->latest, gst_structure_free);
      text_flush (self, event);
      break;
    case GST_EVENT_EOS:
      /* the answer in progress belongs before EOS */
      g_mutex_lock (&self->lock);
      while ((self->job || self->busy) && !self->shutting_down)
        g_cond_wait (&self->cond, &self->lock);
      g_mutex_unlock (&self->lock);
      publish_results (self, self->last_pts, self->last_duration);
      text_queue_push (self, gst_event_new_eos ());
      break;
    default:
      break;
  }

  ret = GST_BASE_TRANSFORM_CLASS (parent_class)->sink_event (trans, event);

  if (GST_EVENT_TYPE (event) == GST_EVENT_SEGMENT)
    text_queue_push (self, gst_event_new_segment (&trans->segment));
  return ret;
}

static gboolean
gst_cobra_vlm_set_info (GstVideoFilter * filter, GstCaps * incaps,
    GstVideoInfo * in_info, GstCaps * outcaps, GstVideoInfo * out_info)
{
  GstCobraVlm *self = GST_COBRA_VLM (filter);

  self->format = cobra_format_from_video (GST_VIDEO_INFO_FORMAT (in_info));
  self->yuv_matrix = cobra_matrix_from_video (in_info);
  GST_DEBUG_OBJECT (self, "%s %dx%d, YUV matrix %d",
      GST_VIDEO_INFO_NAME (in_info), GST_VIDEO_INFO_WIDTH (in_info),
      GST_VIDEO_INFO_HEIGHT (in_info), self->yuv_matrix);
  return TRUE;
}

/* ---- states ---- */

static gboolean
gst_cobra_vlm_start (GstBaseTransform * trans)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);
  GError *err = NULL;
  gboolean async;
  guint n_threads;

  /* model-file may have changed in READY */
  if (!gst_cobra_vlm_load_model (self))
    return FALSE;

  GST_OBJECT_LOCK (self);
  async = self->async;
  n_threads = self->n_threads;
  self->frames_analyzed = self->frames_skipped = 0;
  GST_OBJECT_UNLOCK (self);

  self->session = cobra_session_new (self->model, n_threads, &err);
  if (self->session == NULL) {
    GST_ELEMENT_ERROR (self, LIBRARY, INIT, ("Could not start the model: %s", err->message),
        ("%s", err->message));
    g_error_free (err);
    return FALSE;
  }
  self->shutting_down = FALSE;
  self->busy = FALSE;
  self->seq = 0;
  self->last_sampled = self->last_pts = self->last_duration = GST_CLOCK_TIME_NONE;
  self->fresh = FALSE;
  if (async) {
    self->worker = g_thread_try_new ("cobravlm", worker_main, self, &err);
    if (self->worker == NULL) {
      GST_ELEMENT_ERROR (self, RESOURCE, FAILED, ("Could not start a thread: %s",
              err->message), (NULL));
      g_error_free (err);
      g_clear_pointer (&self->session, cobra_session_free);
      return FALSE;
    }
  }
  return TRUE;
}

static gboolean
gst_cobra_vlm_stop (GstBaseTransform * trans)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);

  g_mutex_lock (&self->lock);
  self->shutting_down = TRUE;
  cancel_locked (self);
  g_mutex_unlock (&self->lock);
  g_clear_pointer (&self->worker, g_thread_join);

  g_clear_pointer (&self->session, cobra_session_free);
  g_queue_clear_full (&self->done, (GDestroyNotify) gst_structure_free);
  g_clear_pointer (&self->latest, gst_structure_free);
  g_clear_pointer (&self->truncated_question, g_free);
  GST_OBJECT_LOCK (self);
  g_queue_clear_full (&self->asks, (GDestroyNotify) question_free);
  GST_OBJECT_UNLOCK (self);
  return TRUE;
}

static GstStateChangeReturn
gst_cobra_vlm_change_state (GstElement * element, GstStateChange transition)
{
  GstCobraVlm *self = GST_COBRA_VLM (element);
  GstStateChangeReturn ret;

  switch (transition) {
    case GST_STATE_CHANGE_NULL_TO_READY:
      if (!gst_cobra_vlm_load_model (self))
        return GST_STATE_CHANGE_FAILURE;
      break;
    case GST_STATE_CHANGE_PAUSED_TO_READY:
      /* Stop a generation now: deactivating the pads waits for the streaming thread, which
       * may be inside the model (async=false) or waiting for it (EOS). */
      g_mutex_lock (&self->lock);
      self->shutting_down = TRUE;
      cancel_locked (self);
      g_mutex_unlock (&self->lock);
      break;
    default:
      break;
  }

  ret = GST_ELEMENT_CLASS (parent_class)->change_state (element, transition);

  switch (transition) {
    case GST_STATE_CHANGE_READY_TO_NULL:
      g_clear_pointer (&self->model, cobra_model_free);
      break;
    case GST_STATE_CHANGE_NULL_TO_READY:
      if (ret == GST_STATE_CHANGE_FAILURE)
        g_clear_pointer (&self->model, cobra_model_free);
      break;
    default:
      break;
  }
  return ret;
}

static gboolean
plugin_init (GstPlugin * plugin)
{
  return GST_ELEMENT_REGISTER (cobravlm, plugin);
}

GST_PLUGIN_DEFINE (GST_VERSION_MAJOR, GST_VERSION_MINOR, cobra,
    "Cobra vision-language model: captions and answers for video",
    plugin_init, VERSION, "LGPL", GST_PACKAGE_NAME, GST_PACKAGE_ORIGIN)
