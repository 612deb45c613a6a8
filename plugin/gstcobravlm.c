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
 * stream. Video passes through unchanged: no frame is modified, dropped or held (except with
 * async=false, which holds each sampled frame for its answer and reports that as latency).
 *
 * A frame is sampled every #GstCobraVlm:interval of running time (the first frame always); a
 * question asked with #GstCobraVlm::ask is answered on the next frame, whatever the interval.
 * With #GstCobraVlm:async (the default) the answer is computed on a worker thread and due frames
 * that arrive while it is busy pass untouched and are counted in #GstCobraVlm:frames-skipped;
 * with async=false the streaming thread waits for every answer, so each sampled frame carries
 * its own caption (offline use).
 *
 * Each answer leaves three ways, all with the same fields (element, stream-id, text, prompt,
 * request-id for asks, stop-reason, source-pts, running-time, timestamp, timestamp-source,
 * latency, n-tokens, seq):
 *
 * * a #GstCustomMeta named "CobraCaptionMeta" on the buffer it is published on (with
 *   "fresh"=%TRUE), and the prompt's latest answer on every later buffer ("fresh"=%FALSE); each
 *   element adds its own, so several in series are all found by iterating the metas;
 * * an element message named "cobravlm" (when #GstCobraVlm:post-messages is set); an `ask`
 *   that cannot be answered gets a "cobravlm-unanswered" message with the reason instead;
 * * the request pad "text_src": with #GstCobraVlm:text-format=text the current caption on every
 *   video frame (for textoverlay and subtitle tracks), with text-format=json one JSON object per
 *   answer (for files and network sinks); its time follows the video's and never goes back.
 *
 * ## Example launch lines
 * |[
 * gst-launch-1.0 -m videotestsrc num-buffers=100 ! videoconvert ! \
 *     cobravlm model-file=cobra.gguf prompt="What is happening?" ! fakesink
 * ]| Prints a "cobravlm" message per caption.
 * |[
 * gst-launch-1.0 v4l2src ! videoconvert ! cobravlm name=vlm model-file=cobra.gguf ! \
 *     textoverlay name=ov ! videoconvert ! autovideosink  vlm.text_src ! ov.text_sink
 * ]| Shows the captions over a live camera.
 * |[
 * gst-launch-1.0 rtspsrc location=rtsp://camera/stream ! decodebin ! videoconvert ! \
 *     cobravlm name=vlm model-file=cobra.gguf text-format=json ! fakesink \
 *     vlm.text_src ! filesink location=events.jsonl
 * ]| Writes one JSON line per answer.
 */

#include <string.h>

#include "gstcobravlm-private.h"

GST_DEBUG_CATEGORY (gst_cobra_vlm_debug);

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
#define DEFAULT_TEXT_FORMAT GST_COBRA_VLM_TEXT_FORMAT_TEXT
#define DEFAULT_LABELS NULL
#define DEFAULT_LABEL_THRESHOLD 0.0
#define DEFAULT_LABEL_CHANGES_ONLY FALSE
#define DEFAULT_ROI_MODE FALSE
#define DEFAULT_ROI_TYPES NULL
#define DEFAULT_MAX_ROIS 8
#define DEFAULT_ROI_MARGIN 0.0
#define DEFAULT_CHANGE_THRESHOLD 0.0

/* Upper bounds that keep a typo from asking for hours of decoding or thousands of threads. */
#define MAX_MAX_TOKENS 2048
#define MAX_TEMPERATURE 10.0f
#define MIN_TOP_P 0.001f              /* the engine needs top-p > 0 */
#define MAX_TOP_K 65536
#define MAX_N_THREADS 1024
#define MAX_MAX_ROIS 256
#define MAX_ROI_MARGIN 1.0

/* How long text_src covers a frame whose buffer and caps give no duration: short enough not to
 * overlap the next frame's text at any rate a camera delivers, so text time never goes back. */
#define FALLBACK_FRAME_DURATION (GST_SECOND / 120)

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
  PROP_TEXT_FORMAT,
  PROP_LABELS,
  PROP_LABEL_THRESHOLD,
  PROP_LABEL_CHANGES_ONLY,
  PROP_ROI_MODE,
  PROP_ROI_TYPES,
  PROP_MAX_ROIS,
  PROP_ROI_MARGIN,
  PROP_CHANGE_THRESHOLD,
  PROP_FRAMES_ANALYZED,
  PROP_FRAMES_SKIPPED,
  PROP_FRAMES_UNCHANGED,
  PROP_ROIS_SKIPPED,
  PROP_ASKS_REFUSED,
  PROP_TEXT_DROPPED,
};

enum
{
  SIGNAL_ASK,
  LAST_SIGNAL
};

static guint gst_cobra_vlm_signals[LAST_SIGNAL];

/* The raw formats the engine reads, in the order the caps offer them (cheapest first). */
static const struct
{
  GstVideoFormat video;
  CobraPixelFormat cobra;
} formats[] = {
  {GST_VIDEO_FORMAT_I420, COBRA_FORMAT_I420},
  {GST_VIDEO_FORMAT_NV12, COBRA_FORMAT_NV12},
  {GST_VIDEO_FORMAT_NV21, COBRA_FORMAT_NV21},
  {GST_VIDEO_FORMAT_YV12, COBRA_FORMAT_YV12},
  {GST_VIDEO_FORMAT_YUY2, COBRA_FORMAT_YUY2},
  {GST_VIDEO_FORMAT_UYVY, COBRA_FORMAT_UYVY},
  {GST_VIDEO_FORMAT_GRAY8, COBRA_FORMAT_GRAY8},
  {GST_VIDEO_FORMAT_RGB, COBRA_FORMAT_RGB},
  {GST_VIDEO_FORMAT_BGR, COBRA_FORMAT_BGR},
  {GST_VIDEO_FORMAT_RGBA, COBRA_FORMAT_RGBA},
  {GST_VIDEO_FORMAT_RGBx, COBRA_FORMAT_RGBx},
  {GST_VIDEO_FORMAT_BGRA, COBRA_FORMAT_BGRA},
  {GST_VIDEO_FORMAT_BGRx, COBRA_FORMAT_BGRx},
  {GST_VIDEO_FORMAT_ARGB, COBRA_FORMAT_ARGB},
  {GST_VIDEO_FORMAT_xRGB, COBRA_FORMAT_xRGB},
  {GST_VIDEO_FORMAT_ABGR, COBRA_FORMAT_ABGR},
  {GST_VIDEO_FORMAT_xBGR, COBRA_FORMAT_xBGR},
};

/* video/x-raw in the formats above, at sizes the engine accepts */
static GstCaps *
video_caps (void)
{
  GstCaps *caps = gst_caps_new_empty_simple ("video/x-raw");
  GValue list = G_VALUE_INIT, v = G_VALUE_INIT;

  g_value_init (&list, GST_TYPE_LIST);
  g_value_init (&v, G_TYPE_STRING);
  for (guint i = 0; i < G_N_ELEMENTS (formats); i++) {
    g_value_set_static_string (&v, gst_video_format_to_string (formats[i].video));
    gst_value_list_append_value (&list, &v);
  }
  gst_caps_set_value (caps, "format", &list);
  gst_caps_set_simple (caps, "width", GST_TYPE_INT_RANGE, 1, COBRA_MAX_IMAGE_SIDE,
      "height", GST_TYPE_INT_RANGE, 1, COBRA_MAX_IMAGE_SIDE,
      "framerate", GST_TYPE_FRACTION_RANGE, 0, 1, G_MAXINT, 1, NULL);
  g_value_unset (&v);
  g_value_unset (&list);
  return caps;
}

static GstStaticPadTemplate text_src_template = GST_STATIC_PAD_TEMPLATE ("text_src",
    GST_PAD_SRC, GST_PAD_REQUEST, GST_STATIC_CAPS ("text/x-raw, format=(string)utf8"));

GType
gst_cobra_vlm_text_format_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {GST_COBRA_VLM_TEXT_FORMAT_TEXT, "The current caption on every frame (overlays, subtitles)",
        "text"},
    {GST_COBRA_VLM_TEXT_FORMAT_JSON, "One JSON object per answer (JSON Lines)", "json"},
    {0, NULL, NULL},
  };

  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstCobraVlmTextFormat", values));
  return type;
}

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
static gboolean gst_cobra_vlm_query (GstBaseTransform * trans, GstPadDirection direction,
    GstQuery * query);
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

  GstCaps *caps;

  GST_DEBUG_CATEGORY_INIT (gst_cobra_vlm_debug, "cobravlm", 0,
      "Cobra vision-language model");

  /* no tags: the caption stays on buffers through any conversion or scaling */
  gst_meta_register_custom (GST_COBRA_CAPTION_META_NAME, meta_tags, NULL, NULL, NULL);

  gobject_class->set_property = gst_cobra_vlm_set_property;
  gobject_class->get_property = gst_cobra_vlm_get_property;
  gobject_class->finalize = gst_cobra_vlm_finalize;

  g_object_class_install_property (gobject_class, PROP_MODEL_FILE,
      g_param_spec_string ("model-file", "Model file",
          "Cobra model file (GGUF, written by cobra_convert.py); loaded in NULL->READY "
          "(again in READY->PAUSED when changed in READY); refused in PAUSED and PLAYING",
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
  g_object_class_install_property (gobject_class, PROP_TEXT_FORMAT,
      g_param_spec_enum ("text-format", "Text format",
          "What text_src carries: the current caption on every frame, or one JSON object "
          "per answer", GST_TYPE_COBRA_VLM_TEXT_FORMAT, DEFAULT_TEXT_FORMAT,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_LABELS,
      g_param_spec_string ("labels", "Labels",
          "Comma-separated answers to score instead of generating one (label mode): the "
          "result is the most likely, with its confidence; empty = generate text",
          DEFAULT_LABELS,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_LABEL_THRESHOLD,
      g_param_spec_double ("label-threshold", "Label threshold",
          "Label mode: publish a result only when its confidence is at least this", 0.0, 1.0,
          DEFAULT_LABEL_THRESHOLD,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_LABEL_CHANGES_ONLY,
      g_param_spec_boolean ("label-changes-only", "Label changes only",
          "Label mode: publish a result only when its label differs from the last published",
          DEFAULT_LABEL_CHANGES_ONLY,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_ROI_MODE,
      g_param_spec_boolean ("roi-mode", "Region mode",
          "Ask the prompt about each region of interest (GstVideoRegionOfInterestMeta) of a "
          "sampled frame instead of the whole frame; frames without regions are not analysed",
          DEFAULT_ROI_MODE,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_ROI_TYPES,
      g_param_spec_string ("roi-types", "Region types",
          "Region mode: comma-separated region types to analyse (empty = all)",
          DEFAULT_ROI_TYPES,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_MAX_ROIS,
      g_param_spec_uint ("max-rois", "Maximum regions",
          "Region mode: most regions analysed per frame (the first ones); the rest are "
          "counted in rois-skipped", 1, MAX_MAX_ROIS, DEFAULT_MAX_ROIS,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_ROI_MARGIN,
      g_param_spec_double ("roi-margin", "Region margin",
          "Region mode: grow each region by this fraction of its width and height on every "
          "side (clamped to the frame)", 0.0, MAX_ROI_MARGIN, DEFAULT_ROI_MARGIN,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_CHANGE_THRESHOLD,
      g_param_spec_double ("change-threshold", "Change threshold",
          "Skip a due frame when its luma thumbnail differs from the last analysed frame's by "
          "less than this mean absolute difference in levels (0-255); 0 = analyse every due "
          "frame", 0.0, 255.0, DEFAULT_CHANGE_THRESHOLD,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_FRAMES_ANALYZED,
      g_param_spec_uint64 ("frames-analyzed", "Frames analysed",
          "Frames handed to the model since the element started", 0, G_MAXUINT64, 0,
          G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
  g_object_class_install_property (gobject_class, PROP_FRAMES_SKIPPED,
      g_param_spec_uint64 ("frames-skipped", "Frames skipped",
          "Frames due for analysis that passed un-analysed because the model was busy",
          0, G_MAXUINT64, 0, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
  g_object_class_install_property (gobject_class, PROP_FRAMES_UNCHANGED,
      g_param_spec_uint64 ("frames-unchanged", "Frames unchanged",
          "Frames due for analysis that were not analysed because the scene had not changed "
          "(change-threshold)", 0, G_MAXUINT64, 0, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
  g_object_class_install_property (gobject_class, PROP_ROIS_SKIPPED,
      g_param_spec_uint64 ("rois-skipped", "Regions skipped",
          "Regions not analysed: empty once clamped to the frame, or past max-rois", 0,
          G_MAXUINT64, 0, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
  g_object_class_install_property (gobject_class, PROP_ASKS_REFUSED,
      g_param_spec_uint64 ("asks-refused", "Asks refused",
          "`ask` calls refused since the element was made: an invalid question, "
          G_STRINGIFY (MAX_PENDING_ASKS) " already waiting, or after EOS", 0, G_MAXUINT64, 0,
          G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
  g_object_class_install_property (gobject_class, PROP_TEXT_DROPPED,
      g_param_spec_uint64 ("text-dropped", "Text dropped",
          "text_src buffers replaced by GAP events because the text branch held "
          G_STRINGIFY (MAX_TEXT_QUEUE) " items", 0, G_MAXUINT64, 0,
          G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));

  /**
   * GstCobraVlm::ask:
   * @cobravlm: the element
   * @question: a question (non-empty UTF-8)
   *
   * Asks @question once, about the next frame that arrives (whatever #GstCobraVlm:interval;
   * after the answer in progress, if any). Its result carries the returned id as "request-id";
   * if it cannot be answered (flush, stop, EOS first, an error) a "cobravlm-unanswered"
   * message with that id says why.
   *
   * Returns: the request id (> 0), or 0 when @question was refused (not non-empty UTF-8, or
   * too many questions waiting), with a warning on the bus
   */
  gst_cobra_vlm_signals[SIGNAL_ASK] =
      g_signal_new_class_handler ("ask", G_TYPE_FROM_CLASS (klass),
      G_SIGNAL_RUN_LAST | G_SIGNAL_ACTION, G_CALLBACK (gst_cobra_vlm_ask), NULL, NULL, NULL,
      G_TYPE_UINT, 1, G_TYPE_STRING);

  gst_element_class_set_static_metadata (element_class, "Cobra vision-language model",
      "Filter/Analyzer/Video",
      "Captions and answers questions about video frames with the Cobra model",
      "gst-cobra developers");
  caps = video_caps ();
  gst_element_class_add_pad_template (element_class,
      gst_pad_template_new ("sink", GST_PAD_SINK, GST_PAD_ALWAYS, caps));
  gst_element_class_add_pad_template (element_class,
      gst_pad_template_new ("src", GST_PAD_SRC, GST_PAD_ALWAYS, caps));
  gst_caps_unref (caps);
  gst_element_class_add_static_pad_template (element_class, &text_src_template);

  element_class->change_state = GST_DEBUG_FUNCPTR (gst_cobra_vlm_change_state);
  element_class->request_new_pad = GST_DEBUG_FUNCPTR (gst_cobra_vlm_request_new_pad);
  element_class->release_pad = GST_DEBUG_FUNCPTR (gst_cobra_vlm_release_pad);

  trans_class->start = GST_DEBUG_FUNCPTR (gst_cobra_vlm_start);
  trans_class->stop = GST_DEBUG_FUNCPTR (gst_cobra_vlm_stop);
  trans_class->sink_event = GST_DEBUG_FUNCPTR (gst_cobra_vlm_sink_event);
  trans_class->query = GST_DEBUG_FUNCPTR (gst_cobra_vlm_query);
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
  self->text_format = DEFAULT_TEXT_FORMAT;
  self->label_threshold = DEFAULT_LABEL_THRESHOLD;
  self->label_changes_only = DEFAULT_LABEL_CHANGES_ONLY;
  self->roi_mode = DEFAULT_ROI_MODE;
  self->max_rois = DEFAULT_MAX_ROIS;
  self->roi_margin = DEFAULT_ROI_MARGIN;
  self->change_threshold = DEFAULT_CHANGE_THRESHOLD;
  g_queue_init (&self->asks);
  g_mutex_init (&self->lock);
  g_cond_init (&self->cond);
  g_queue_init (&self->done);
  g_mutex_init (&self->text_lock);
  g_cond_init (&self->text_cond);
  g_queue_init (&self->text_queue);
  self->last_sampled = GST_CLOCK_TIME_NONE;
  self->text_position = GST_CLOCK_TIME_NONE;

  /* in place, and never a late frame dropped for QoS (GstVideoFilter enables it) */
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
  gst_base_transform_set_qos_enabled (GST_BASE_TRANSFORM (self), FALSE);
}

static void
gst_cobra_vlm_finalize (GObject * object)
{
  GstCobraVlm *self = GST_COBRA_VLM (object);

  g_free (self->model_file);
  g_free (self->prompt);
  g_free (self->stream_id);
  g_free (self->caption);
  g_strfreev (self->labels);
  g_strfreev (self->roi_types);
  g_queue_clear_full (&self->asks, (GDestroyNotify) question_free);
  text_queue_clear (self);
  /* only when the application disposed of the element without setting it to NULL */
  g_clear_pointer (&self->shared, shared_model_release);
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

/* A comma-separated list: its trimmed items, or NULL for an empty one. */
static gchar **
split_list (const gchar * list)
{
  gchar **items;

  if (!question_is_valid (list))        /* NULL, blank (or not UTF-8: refused before) */
    return NULL;
  items = g_strsplit (list, ",", -1);
  for (gchar ** i = items; *i; i++)
    g_strstrip (*i);
  return items;
}

/* Why a labels value cannot be used (g_free it), or NULL. Labels the tokenizer cannot encode
 * are found by the engine on the first frame (with one warning). */
static gchar *
labels_invalid (const gchar * list)
{
  gchar **items = split_list (list), *why = NULL;
  guint n = items ? g_strv_length (items) : 0;

  if (list && !g_utf8_validate (list, -1, NULL))
    why = g_strdup ("not UTF-8 text");
  else if (n > COBRA_MAX_LABELS)
    why = g_strdup_printf ("%u labels, more than %d", n, COBRA_MAX_LABELS);
  for (guint i = 0; i < n && !why; i++) {
    if (*items[i] == '\0')
      why = g_strdup_printf ("label %u is empty", i + 1);
    for (guint j = 0; j < i && !why; j++)
      if (g_str_equal (items[i], items[j]))
        why = g_strdup_printf ("\"%s\" is given twice", items[i]);
  }
  g_strfreev (items);
  return why;
}

/* Properties refused with a reason (posted once the object lock is released). */
static gboolean
refuse_property (GstCobraVlm * self, guint prop_id, const GValue * value)
{
  switch (prop_id) {
    case PROP_MODEL_FILE:
      /* the session in use reads the loaded model: a new one is taken in READY->PAUSED */
      if (GST_STATE (self) <= GST_STATE_READY && GST_STATE_NEXT (self) <= GST_STATE_READY)
        return FALSE;
      GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
          ("model-file can only change in the NULL or READY state; keeping \"%s\".",
              self->model_file), ("refused \"%s\" while %s", g_value_get_string (value),
              gst_element_state_get_name (GST_STATE (self))));
      return TRUE;
    case PROP_PROMPT:
      if (question_is_valid (g_value_get_string (value)))
        return FALSE;
      GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
          ("The prompt must be non-empty UTF-8 text; keeping \"%s\".", self->prompt), (NULL));
      return TRUE;
    case PROP_LABELS:{
      gchar *why = labels_invalid (g_value_get_string (value)), *shown;

      if (why == NULL)
        return FALSE;
      shown = g_utf8_make_valid (g_value_get_string (value), -1);
      GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS, ("labels: %s; keeping the labels set "
              "before.", why), ("refused: %s", shown));
      g_free (shown);
      g_free (why);
      return TRUE;
    }
    default:
      return FALSE;
  }
}

static void
gst_cobra_vlm_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstCobraVlm *self = GST_COBRA_VLM (object);

  if (refuse_property (self, prop_id, value))
    return;
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL_FILE:
      g_free (self->model_file);
      self->model_file = g_value_dup_string (value);
      break;
    case PROP_PROMPT:
      g_free (self->prompt);
      self->prompt = g_value_dup_string (value);
      break;
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
    case PROP_TEXT_FORMAT:
      self->text_format = g_value_get_enum (value);
      break;
    case PROP_LABELS:
      g_strfreev (self->labels);
      self->labels = split_list (g_value_get_string (value));
      break;
    case PROP_LABEL_THRESHOLD:
      self->label_threshold = g_value_get_double (value);
      break;
    case PROP_LABEL_CHANGES_ONLY:
      self->label_changes_only = g_value_get_boolean (value);
      break;
    case PROP_ROI_MODE:
      self->roi_mode = g_value_get_boolean (value);
      break;
    case PROP_ROI_TYPES:
      g_strfreev (self->roi_types);
      self->roi_types = split_list (g_value_get_string (value));
      break;
    case PROP_MAX_ROIS:
      self->max_rois = g_value_get_uint (value);
      break;
    case PROP_ROI_MARGIN:
      self->roi_margin = g_value_get_double (value);
      break;
    case PROP_CHANGE_THRESHOLD:
      self->change_threshold = g_value_get_double (value);
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
    case PROP_TEXT_FORMAT:
      g_value_set_enum (value, self->text_format);
      break;
    case PROP_LABELS:
      g_value_take_string (value, self->labels ? g_strjoinv (",", self->labels) : NULL);
      break;
    case PROP_LABEL_THRESHOLD:
      g_value_set_double (value, self->label_threshold);
      break;
    case PROP_LABEL_CHANGES_ONLY:
      g_value_set_boolean (value, self->label_changes_only);
      break;
    case PROP_ROI_MODE:
      g_value_set_boolean (value, self->roi_mode);
      break;
    case PROP_ROI_TYPES:
      g_value_take_string (value, self->roi_types ? g_strjoinv (",", self->roi_types) : NULL);
      break;
    case PROP_MAX_ROIS:
      g_value_set_uint (value, self->max_rois);
      break;
    case PROP_ROI_MARGIN:
      g_value_set_double (value, self->roi_margin);
      break;
    case PROP_CHANGE_THRESHOLD:
      g_value_set_double (value, self->change_threshold);
      break;
    case PROP_FRAMES_UNCHANGED:
      g_value_set_uint64 (value, self->frames_unchanged);
      break;
    case PROP_ROIS_SKIPPED:
      g_value_set_uint64 (value, self->rois_skipped);
      break;
    case PROP_FRAMES_ANALYZED:
      g_value_set_uint64 (value, self->frames_analyzed);
      break;
    case PROP_FRAMES_SKIPPED:
      g_value_set_uint64 (value, self->frames_skipped);
      break;
    case PROP_ASKS_REFUSED:
      g_value_set_uint64 (value, self->asks_refused);
      break;
    case PROP_TEXT_DROPPED:
      g_value_set_uint64 (value, self->text_dropped);
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
  gboolean valid = question_is_valid (question), ended, full;
  guint id = 0;

  /* `lock` too: EOS sets `draining` under it before it answers the asks left, so no question
   * slips in after that */
  g_mutex_lock (&self->lock);
  GST_OBJECT_LOCK (self);
  ended = self->draining;
  full = self->asks.length >= MAX_PENDING_ASKS;
  if (valid && !ended && !full) {
    id = ++self->next_request_id;
    if (id == 0)                /* 0 means refused */
      id = ++self->next_request_id;
    g_queue_push_tail (&self->asks, question_new (question, id, NULL));
  } else {
    self->asks_refused++;
  }
  GST_OBJECT_UNLOCK (self);
  g_mutex_unlock (&self->lock);

  if (!valid)
    GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
        ("ask: the question must be non-empty UTF-8 text."), (NULL));
  else if (ended)
    GST_ELEMENT_WARNING (self, RESOURCE, BUSY,
        ("ask: the stream has ended; question refused."), ("refused: %s", question));
  else if (full)
    GST_ELEMENT_WARNING (self, RESOURCE, BUSY,
        ("ask: %d questions are already waiting; question refused.", MAX_PENDING_ASKS),
        ("refused: %s", question));
  else
    GST_DEBUG_OBJECT (self, "request %u: %s", id, question);
  return id;
}

/* ---- model ---- */

/* Loads model-file (or shares the load of another element on it) unless it is the one in use. */
static gboolean
gst_cobra_vlm_load_model (GstCobraVlm * self)
{
  GError *err = NULL;
  SharedModel *shared;
  gchar *path;

  GST_OBJECT_LOCK (self);
  path = g_strdup (self->model_file);
  GST_OBJECT_UNLOCK (self);

  if (path == NULL) {
    GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND, ("No model file set."),
        ("Set the model-file property to a file written by cobra_convert.py."));
    return FALSE;
  }
  if (self->shared
      && g_strcmp0 (cobra_model_path (shared_model_get (self->shared)), path) == 0) {
    g_free (path);
    return TRUE;
  }

  shared = shared_model_acquire (path, &err);
  if (shared == NULL) {
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ,
        ("Could not load the model file \"%s\": %s", path, err->message), (NULL));
    g_error_free (err);
    g_free (path);
    return FALSE;
  }
  GST_INFO_OBJECT (self, "loaded %s (%s, %d px)", path,
      cobra_model_name (shared_model_get (shared)),
      cobra_model_image_size (shared_model_get (shared)));
  g_clear_pointer (&self->shared, shared_model_release);
  self->shared = shared;
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

/* Puts a result's fields, and `fresh`, in a CobraCaptionMeta of its own on `buf`. */
static void
add_caption_meta (GstBuffer * buf, const GstStructure * result, gboolean fresh)
{
  GstCustomMeta *meta = gst_buffer_add_custom_meta (buf, GST_COBRA_CAPTION_META_NAME);
  GstStructure *s = gst_custom_meta_get_structure (meta);

  gst_structure_foreach (result, copy_field, s);
  gst_structure_set (s, "fresh", G_TYPE_BOOLEAN, fresh, NULL);
}

/* A region's answer goes to the frame's region of interest with its id, as a parameter named
 * "cobravlm" (the convention DL Streamer and others read): the very frame with async=false, a
 * later one with async (detectors that track keep their ids). */
static void
attach_to_region (GstBuffer * buf, guint region_id, const GstStructure * result)
{
  GstVideoRegionOfInterestMeta *roi =
      gst_buffer_get_video_region_of_interest_meta_id (buf, (gint) region_id);

  if (roi)
    gst_video_region_of_interest_meta_add_param (roi, gst_structure_copy (result));
}

/* Hands the results finished since the last call on: each to the meta of `buf` (when there is
 * one) and, in JSON mode, to text_src at [start, end); the prompt's becomes the caption every
 * later buffer carries. TRUE when the prompt's was among them. */
static gboolean
publish_results (GstCobraVlm * self, GstBuffer * buf, GstClockTime start, GstClockTime end)
{
  GQueue results;
  GstStructure *result;
  gboolean caption = FALSE;

  g_mutex_lock (&self->lock);
  results = self->done;
  g_queue_init (&self->done);
  g_mutex_unlock (&self->lock);

  while ((result = g_queue_pop_head (&results))) {
    guint region_id;

    if (buf)
      add_caption_meta (buf, result, TRUE);
    if (buf && gst_structure_get_uint (result, "region-id", &region_id))
      attach_to_region (buf, region_id, result);
    text_push_result (self, result, start, end);
    if (gst_structure_has_field (result, "request-id")) {
      gst_structure_free (result);
      continue;
    }
    text_set_caption (self, gst_structure_get_string (result, "text"));
    if (self->latest)
      gst_structure_free (self->latest);
    self->latest = result;
    caption = TRUE;
  }
  return caption;
}

/* ---- streaming ---- */

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

/* Change gating: FALSE when the frame looks like the last one analysed (its thumbnail differs
 * by less than change-threshold); else remembers its thumbnail as the new reference. */
static gboolean
scene_changed (GstCobraVlm * self, GstBuffer * buf)
{
  guint8 thumb[THUMB_SIDE * THUMB_SIDE];
  gdouble threshold, diff;
  GstVideoFrame f;

  GST_OBJECT_LOCK (self);
  threshold = self->change_threshold;
  GST_OBJECT_UNLOCK (self);
  if (threshold <= 0)
    return TRUE;
  if (!gst_video_frame_map (&f, &GST_VIDEO_FILTER (self)->in_info, buf, GST_MAP_READ))
    return TRUE;                /* job_new() says why */
  frame_thumbnail (&f, thumb);
  gst_video_frame_unmap (&f);
  diff = self->has_thumb ? thumbnail_difference (thumb, self->thumb) : G_MAXDOUBLE;
  GST_LOG_OBJECT (self, "change %.2f (threshold %.2f)", diff, threshold);
  if (diff < threshold)
    return FALSE;
  memcpy (self->thumb, thumb, sizeof thumb);
  self->has_thumb = TRUE;
  return TRUE;
}

/* Region mode: the regions of this frame to ask the prompt about (NULL when off). */
static GArray *
regions_of (GstCobraVlm * self, GstBuffer * buf)
{
  gchar **types;
  guint max, skipped;
  gdouble margin;
  gboolean on;
  GArray *regions;

  GST_OBJECT_LOCK (self);
  on = self->roi_mode;
  types = g_strdupv (self->roi_types);
  max = self->max_rois;
  margin = self->roi_margin;
  GST_OBJECT_UNLOCK (self);
  if (!on) {
    g_strfreev (types);
    return NULL;
  }
  regions = frame_regions (buf, &GST_VIDEO_FILTER (self)->in_info, types, max, margin,
      &skipped);
  g_strfreev (types);
  GST_OBJECT_LOCK (self);
  self->rois_skipped += skipped;
  GST_OBJECT_UNLOCK (self);
  return regions;
}

/* Starts a job for this frame when the prompt is due (and the scene changed, and in region mode
 * the frame has regions) or questions wait, and the element has no job running: the job waits
 * for its turn in the model's scheduler (a waiting job of an older frame gives way to it), and
 * with async=false the frame waits for its answer. */
static void
maybe_analyse (GstCobraVlm * self, GstBuffer * buf, GstClockTime running_time,
    gint64 arrival_us)
{
  gboolean due = sample_due (self, running_time), asked, stopping, busy;
  GArray *regions = NULL;
  GError *err = NULL;
  Job *job, *stale = NULL;

  GST_OBJECT_LOCK (self);
  asked = !g_queue_is_empty (&self->asks);
  GST_OBJECT_UNLOCK (self);
  if (!due && !asked)
    return;

  g_mutex_lock (&self->lock);
  stopping = self->shutting_down || self->draining;
  /* a job still waiting for its turn gives way to this fresher frame */
  if (due && !stopping && !self->running && self->job)
    stale = g_steal_pointer (&self->job);
  busy = self->running || self->job;
  g_mutex_unlock (&self->lock);
  if (stale)
    job_retire (self, stale);
  if (stopping) {
    GST_DEBUG_OBJECT (self, "stopping: frame at %" GST_TIME_FORMAT " not analysed",
        GST_TIME_ARGS (GST_BUFFER_PTS (buf)));
    return;
  }
  if (busy) {
    if (due) {
      GST_OBJECT_LOCK (self);
      self->frames_skipped++;
      GST_OBJECT_UNLOCK (self);
    }
    return;
  }
  if (due && !scene_changed (self, buf)) {
    GST_OBJECT_LOCK (self);
    self->frames_unchanged++;
    GST_OBJECT_UNLOCK (self);
    due = FALSE;
  }
  if (due && (regions = regions_of (self, buf)) && regions->len == 0) {
    g_clear_pointer (&regions, g_array_unref);
    due = FALSE;
  }
  if (!due && !asked)
    return;
  job = job_new (self, buf, due, regions, running_time, arrival_us);
  if (job == NULL)
    return;
  if (due)
    self->last_sampled = running_time;
  g_mutex_lock (&self->lock);
  job->epoch = self->epoch;
  self->job = job;
  g_mutex_unlock (&self->lock);
  if (!scheduler_submit (self->shared, self, &err)) {
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED, ("Could not start a thread: %s", err->message),
        (NULL));
    g_error_free (err);
    g_mutex_lock (&self->lock);
    job = g_steal_pointer (&self->job);
    g_mutex_unlock (&self->lock);
    if (job)
      job_abandon (self, job, "stopped");
    return;
  }
  if (self->async_mode)
    return;
  /* async=false: the frame waits for its answer */
  g_mutex_lock (&self->lock);
  while ((self->job || self->running) && !self->shutting_down)
    g_cond_wait (&self->cond, &self->lock);
  g_mutex_unlock (&self->lock);
}

static GstFlowReturn
gst_cobra_vlm_transform_ip (GstBaseTransform * trans, GstBuffer * buf)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);
  GstClockTime pts = GST_BUFFER_PTS (buf), duration = GST_BUFFER_DURATION (buf), end;
  GstClockTime running_time = gst_segment_to_running_time (&trans->segment, GST_FORMAT_TIME, pts);
  gint64 arrival_us = g_get_monotonic_time ();
  gboolean caption;

  if (G_UNLIKELY (!GST_VIDEO_FILTER (self)->negotiated))
    return GST_FLOW_NOT_NEGOTIATED;

  if (!GST_CLOCK_TIME_IS_VALID (duration))
    duration = GST_CLOCK_TIME_IS_VALID (self->frame_duration) ? self->frame_duration :
        FALLBACK_FRAME_DURATION;
  end = GST_CLOCK_TIME_IS_VALID (pts) ? pts + duration : GST_CLOCK_TIME_NONE;

  caption = publish_results (self, buf, pts, end);
  maybe_analyse (self, buf, running_time, arrival_us);
  if (!self->async_mode)
    caption |= publish_results (self, buf, pts, end);

  if (self->latest && !caption)
    add_caption_meta (buf, self->latest, FALSE);
  text_cover (self, pts, end);
  return GST_FLOW_OK;
}

static gboolean
gst_cobra_vlm_sink_event (GstBaseTransform * trans, GstEvent * event)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);
  const gchar *stream_id;
  Job *dropped;
  gboolean ret;

  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_STREAM_START:
      gst_event_parse_stream_start (event, &stream_id);
      GST_OBJECT_LOCK (self);
      g_free (self->stream_id);
      self->stream_id = g_strdup (stream_id);
      GST_OBJECT_UNLOCK (self);
      break;
    case GST_EVENT_FLUSH_START:
      g_mutex_lock (&self->lock);
      self->epoch++;
      dropped = cancel_locked (self, "flushed");
      g_queue_clear_full (&self->done, (GDestroyNotify) gst_structure_free);
      g_mutex_unlock (&self->lock);
      if (dropped)
        job_abandon (self, dropped, "flushed");
      text_flush (self, event);
      break;
    case GST_EVENT_FLUSH_STOP:
      self->last_sampled = GST_CLOCK_TIME_NONE;
      self->has_thumb = FALSE;
      g_clear_pointer (&self->latest, gst_structure_free);
      g_mutex_lock (&self->lock);
      self->draining = FALSE;
      g_mutex_unlock (&self->lock);
      text_flush (self, event);
      break;
    case GST_EVENT_EOS:
      /* the answer in progress belongs before EOS; questions after it are left */
      g_mutex_lock (&self->lock);
      self->draining = TRUE;
      while ((self->job || self->running) && !self->shutting_down)
        g_cond_wait (&self->cond, &self->lock);
      g_mutex_unlock (&self->lock);
      publish_results (self, NULL, trans->segment.position, GST_CLOCK_TIME_NONE);
      post_unanswered_asks (self, "eos");
      text_push_eos (self);
      break;
    default:
      break;
  }

  ret = GST_BASE_TRANSFORM_CLASS (parent_class)->sink_event (trans, event);

  if (GST_EVENT_TYPE (event) == GST_EVENT_SEGMENT)
    text_push_segment (self, &trans->segment);
  return ret;
}

/* With async=false each sampled frame waits for its analysis: that is latency a live pipeline
 * must know, or its sinks drop the frames behind it. It grows to the longest analysis seen (a
 * latency message asks the pipeline to query again). */
static gboolean
gst_cobra_vlm_query (GstBaseTransform * trans, GstPadDirection direction, GstQuery * query)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);
  gboolean ret = GST_BASE_TRANSFORM_CLASS (parent_class)->query (trans, direction, query);
  GstClockTime min, max, processing;
  gboolean live;

  if (!ret || direction != GST_PAD_SRC || GST_QUERY_TYPE (query) != GST_QUERY_LATENCY)
    return ret;
  g_mutex_lock (&self->lock);
  processing = self->async_mode ? 0 : self->processing;
  g_mutex_unlock (&self->lock);
  gst_query_parse_latency (query, &live, &min, &max);
  GST_DEBUG_OBJECT (self, "adding %" GST_TIME_FORMAT " of processing latency",
      GST_TIME_ARGS (processing));
  gst_query_set_latency (query, live, min + processing,
      GST_CLOCK_TIME_IS_VALID (max) ? max + processing : max);
  return ret;
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

static gboolean
gst_cobra_vlm_set_info (GstVideoFilter * filter, GstCaps * incaps,
    GstVideoInfo * in_info, GstCaps * outcaps, GstVideoInfo * out_info)
{
  GstCobraVlm *self = GST_COBRA_VLM (filter);
  GstVideoFormat format = GST_VIDEO_INFO_FORMAT (in_info);
  guint i;

  for (i = 0; i < G_N_ELEMENTS (formats) && formats[i].video != format; i++);
  g_return_val_if_fail (i < G_N_ELEMENTS (formats), FALSE);     /* the caps allow no other */
  self->format = formats[i].cobra;
  self->yuv_matrix = cobra_matrix_from_video (in_info);
  self->frame_duration = GST_VIDEO_INFO_FPS_N (in_info) > 0 ?
      gst_util_uint64_scale_int (GST_SECOND, GST_VIDEO_INFO_FPS_D (in_info),
      GST_VIDEO_INFO_FPS_N (in_info)) : GST_CLOCK_TIME_NONE;
  GST_DEBUG_OBJECT (self, "%s %dx%d, YUV matrix %d",
      GST_VIDEO_INFO_NAME (in_info), GST_VIDEO_INFO_WIDTH (in_info),
      GST_VIDEO_INFO_HEIGHT (in_info), self->yuv_matrix);
  return TRUE;
}

/* ---- pads and states ---- */

static GstPad *
gst_cobra_vlm_request_new_pad (GstElement * element, GstPadTemplate * templ,
    const gchar * name, const GstCaps * caps)
{
  return text_pad_new (GST_COBRA_VLM (element), templ);
}

static void
gst_cobra_vlm_release_pad (GstElement * element, GstPad * pad)
{
  text_pad_release (GST_COBRA_VLM (element), pad);
}

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
  /* (asks-refused is not: questions may be asked, and refused, before the start) */
  self->frames_analyzed = self->frames_skipped = self->frames_unchanged = 0;
  self->text_dropped = self->rois_skipped = 0;
  GST_OBJECT_UNLOCK (self);

  self->session = cobra_session_new (shared_model_get (self->shared), n_threads, &err);
  if (self->session == NULL) {
    GST_ELEMENT_ERROR (self, LIBRARY, INIT, ("Could not start the model: %s", err->message),
        ("%s", err->message));
    g_error_free (err);
    return FALSE;
  }
  self->async_mode = async;
  self->job_threads = n_threads;
  self->shutting_down = self->draining = FALSE;
  self->running = NULL;
  self->seq = 0;
  self->processing = 0;
  self->last_sampled = GST_CLOCK_TIME_NONE;
  self->has_thumb = FALSE;
  return TRUE;
}

/* Stops the running job and drops a waiting one; whatever was not answered is reported as
 * "stopped". */
static void
shut_down (GstCobraVlm * self)
{
  Job *dropped;

  g_mutex_lock (&self->lock);
  self->shutting_down = TRUE;
  dropped = cancel_locked (self, "stopped");
  g_mutex_unlock (&self->lock);
  if (dropped)
    job_abandon (self, dropped, "stopped");
}

static gboolean
gst_cobra_vlm_stop (GstBaseTransform * trans)
{
  GstCobraVlm *self = GST_COBRA_VLM (trans);

  shut_down (self);
  /* out of the scheduler's queue, and no job of ours on a worker, before the session goes */
  scheduler_withdraw (self->shared, self);
  g_mutex_lock (&self->lock);
  while (self->running)
    g_cond_wait (&self->cond, &self->lock);
  g_mutex_unlock (&self->lock);

  g_clear_pointer (&self->session, cobra_session_free);
  g_queue_clear_full (&self->done, (GDestroyNotify) gst_structure_free);
  g_clear_pointer (&self->latest, gst_structure_free);
  g_clear_pointer (&self->truncated_question, g_free);
  g_clear_pointer (&self->failed_labels, g_free);
  g_clear_pointer (&self->last_label, g_free);
  post_unanswered_asks (self, "stopped");
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
      shut_down (self);
      break;
    default:
      break;
  }

  ret = GST_ELEMENT_CLASS (parent_class)->change_state (element, transition);

  switch (transition) {
    case GST_STATE_CHANGE_READY_TO_NULL:
      g_clear_pointer (&self->shared, shared_model_release);
      break;
    case GST_STATE_CHANGE_NULL_TO_READY:
      if (ret == GST_STATE_CHANGE_FAILURE)
        g_clear_pointer (&self->shared, shared_model_release);
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
