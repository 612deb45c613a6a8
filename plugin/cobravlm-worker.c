/* gst-cobra: the cobravlm element's jobs
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */

/* A job is one copied frame and the questions to answer about it. It runs on a worker of the
 * model's scheduler (cobravlm-models.c), one job of an element at a time, under the rules:
 * - a cancel (flush, PAUSED->READY) is sticky in the session until the next job starts, so it
 *   reaches whatever stage runs, and every question left gets a "cobravlm-unanswered" message;
 * - at EOS (`draining`) the answer in progress finishes and the questions after it are left;
 * - every `ask` id accepted gets exactly one outcome: a result or an unanswered message. */

#include <math.h>

#include "gstcobravlm-private.h"

Question *
question_new (const gchar * text, guint request_id, gchar ** labels)
{
  Question *q = g_new (Question, 1);

  q->question = g_strdup (text);
  q->request_id = request_id;
  q->labels = g_strdupv (labels);
  return q;
}

void
question_free (Question * q)
{
  g_free (q->question);
  g_strfreev (q->labels);
  g_free (q);
}

static void
post_structure (GstCobraVlm * self, GstStructure * s)
{
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

/* The outcome of an `ask` that gets no answer: "flushed", "stopped", "eos", or why it failed. */
void
post_unanswered (GstCobraVlm * self, const Question * q, GstClockTime pts, const gchar * reason)
{
  GstStructure *s;

  if (q->request_id == 0)
    return;                     /* the prompt comes back on the next frame */
  GST_DEBUG_OBJECT (self, "request %u not answered: %s", q->request_id, reason);
  s = gst_structure_new ("cobravlm-unanswered",
      "element", G_TYPE_STRING, GST_OBJECT_NAME (self),
      "request-id", G_TYPE_UINT, q->request_id,
      "prompt", G_TYPE_STRING, q->question, "reason", G_TYPE_STRING, reason, NULL);
  if (GST_CLOCK_TIME_IS_VALID (pts))
    gst_structure_set (s, "source-pts", G_TYPE_UINT64, pts, NULL);
  post_structure (self, s);
}

/* Asks that never reached a frame (EOS, stop). */
void
post_unanswered_asks (GstCobraVlm * self, const gchar * reason)
{
  GQueue asks;
  Question *q;

  GST_OBJECT_LOCK (self);
  asks = self->asks;
  g_queue_init (&self->asks);
  GST_OBJECT_UNLOCK (self);
  while ((q = g_queue_pop_head (&asks))) {
    post_unanswered (self, q, GST_CLOCK_TIME_NONE, reason);
    question_free (q);
  }
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
      "element", G_TYPE_STRING, GST_OBJECT_NAME (p->self),
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

/* Unix time in ns of the frame: its reference timestamp (RTP/NTP from rtpjitterbuffer, or any
 * timestamp/x-unix) when it has one, else this machine's clock when it arrived. */
static void
frame_wallclock (GstBuffer * buf, gint64 arrival_real_us, GstStructure * origin)
{
  static const guint64 ntp_to_unix_s = 2208988800u;     /* 1900-01-01 to 1970-01-01 */
  GstReferenceTimestampMeta *ref = gst_buffer_get_reference_timestamp_meta (buf, NULL);
  const gchar *kind = ref ? gst_structure_get_name (gst_caps_get_structure (ref->reference,
          0)) : NULL;

  if (kind && g_str_equal (kind, "timestamp/x-ntp") && ref->timestamp >= ntp_to_unix_s * GST_SECOND) {
    gst_structure_set (origin, "timestamp", G_TYPE_UINT64,
        ref->timestamp - ntp_to_unix_s * GST_SECOND, "timestamp-source", G_TYPE_STRING, "ntp",
        NULL);
  } else if (kind && g_str_equal (kind, "timestamp/x-unix")) {
    gst_structure_set (origin, "timestamp", G_TYPE_UINT64, ref->timestamp,
        "timestamp-source", G_TYPE_STRING, "unix", NULL);
  } else {
    gst_structure_set (origin, "timestamp", G_TYPE_UINT64,
        (guint64) arrival_real_us * GST_USECOND, "timestamp-source", G_TYPE_STRING, "system",
        NULL);
  }
}

void
job_free (Job * job)
{
  gst_video_frame_unmap (&job->frame);
  gst_buffer_unref (job->copy);
  g_queue_clear_full (&job->questions, (GDestroyNotify) question_free);
  if (job->regions)
    g_array_unref (job->regions);
  gst_structure_free (job->origin);
  g_free (job);
}

/* Copies the frame (planes with their strides) and takes the prompt (when `with_prompt`; about
 * each of `regions` when given, which the job then owns), the pending asks and the decoding
 * properties as they are now. Counts the frame as analysed. */
Job *
job_new (GstCobraVlm * self, GstBuffer * buf, gboolean with_prompt, GArray * regions,
    GstClockTime running_time, gint64 arrival_us)
{
  GstVideoInfo *info = &GST_VIDEO_FILTER (self)->in_info;
  gint64 arrival_real_us = g_get_real_time () - (g_get_monotonic_time () - arrival_us);
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
  job->regions = regions;
  g_queue_init (&job->questions);

  cobra_params_init (&job->params);
  GST_OBJECT_LOCK (self);
  job->params.max_tokens = self->max_tokens;
  job->params.temperature = self->temperature;
  job->params.top_k = self->top_k;
  job->params.top_p = self->top_p;
  job->params.seed = self->seed;
  job->partial_messages = self->partial_messages;
  job->questions = self->asks;
  g_queue_init (&self->asks);
  if (with_prompt)
    g_queue_push_head (&job->questions, question_new (self->prompt, 0, self->labels));
  job->origin = gst_structure_new ("cobravlm", "element", G_TYPE_STRING,
      GST_OBJECT_NAME (self), "stream-id", G_TYPE_STRING,
      self->stream_id ? self->stream_id : "", NULL);
  self->frames_analyzed++;
  GST_OBJECT_UNLOCK (self);
  frame_wallclock (buf, arrival_real_us, job->origin);
  return job;
}

static const gchar *
stop_reason_name (CobraStopReason reason)
{
  switch (reason) {
    case COBRA_STOP_EOS:
      return "eos";
    case COBRA_STOP_MAX_TOKENS:
      return "max-tokens";
    default:
      return "cancelled";
  }
}

/* Warns about an over-long question once (not on every frame it is asked about). */
static void
warn_truncated (GstCobraVlm * self, const Question * q, const CobraTimings * timings)
{
  if (timings->n_prompt_truncated == 0 || g_strcmp0 (self->truncated_question, q->question) == 0)
    return;
  GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS,
      ("The question is too long for the model: %d of its tokens were dropped.",
          timings->n_prompt_truncated), ("question: %s", q->question));
  g_free (self->truncated_question);
  self->truncated_question = g_strdup (q->question);
}

static GstStructure *
result_new (const Job * job, const Question * q, const Region * region, const gchar * text,
    const gchar * stop_reason, const CobraTimings * timings)
{
  GstStructure *result = gst_structure_copy (job->origin);

  gst_structure_set (result, "text", G_TYPE_STRING, text,
      "prompt", G_TYPE_STRING, q->question, NULL);
  if (q->request_id)
    gst_structure_set (result, "request-id", G_TYPE_UINT, q->request_id, NULL);
  if (region)
    gst_structure_set (result, "region-id", G_TYPE_UINT, region->id,
        "region-type", G_TYPE_STRING, g_quark_to_string (region->type),
        "region-x", G_TYPE_INT, region->x, "region-y", G_TYPE_INT, region->y,
        "region-width", G_TYPE_INT, region->w, "region-height", G_TYPE_INT, region->h, NULL);
  gst_structure_set (result, "stop-reason", G_TYPE_STRING, stop_reason,
      "source-pts", G_TYPE_UINT64, job->pts,
      "running-time", G_TYPE_UINT64, job->running_time,
      "latency", G_TYPE_UINT64,
      (guint64) (g_get_monotonic_time () - job->arrival_us) * GST_USECOND,
      "n-tokens", G_TYPE_UINT, (guint) timings->n_generated, NULL);
  return result;
}

/* Label mode as events: a result below label-threshold, or (label-changes-only) with the
 * label published last, is not handed on. */
static gboolean
label_worth_publishing (GstCobraVlm * self, const GstStructure * result)
{
  const gchar *label = gst_structure_get_string (result, "label");
  gdouble confidence = 0, threshold;
  gboolean changes_only, worth;

  if (label == NULL)
    return TRUE;
  gst_structure_get_double (result, "confidence", &confidence);
  GST_OBJECT_LOCK (self);
  threshold = self->label_threshold;
  changes_only = self->label_changes_only;
  GST_OBJECT_UNLOCK (self);
  worth = confidence >= threshold &&
      !(changes_only && g_strcmp0 (label, self->last_label) == 0);
  if (worth) {
    g_free (self->last_label);
    self->last_label = g_strdup (label);
  }
  return worth;
}

/* Hands a result to `done` (for the meta and text_src) and the bus, unless a flush came first. */
static void
deliver (GstCobraVlm * self, const Job * job, GstStructure * result)
{
  gboolean keep, post;

  if (!label_worth_publishing (self, result)) {
    GST_LOG_OBJECT (self, "not published: %" GST_PTR_FORMAT, result);
    gst_structure_free (result);
    return;
  }
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

/* Why the questions left in a job go unanswered, or NULL to go on. */
static const gchar *
job_interrupted (GstCobraVlm * self, const Job * job, const GError * err)
{
  const gchar *reason = NULL;

  g_mutex_lock (&self->lock);
  if (self->cancel_reason)
    reason = self->cancel_reason;
  else if (job->epoch != self->epoch)
    reason = "flushed";
  else if (self->draining)
    reason = "eos";
  g_mutex_unlock (&self->lock);
  if (reason == NULL && g_error_matches (err, COBRA_ERROR, COBRA_ERROR_CANCELLED))
    reason = "stopped";
  return reason;
}

/* Label mode: the best label, its softmax share over the labels, and every log-probability. */
static GstStructure *
score_labels (GstCobraVlm * self, const Job * job, const Question * q, const Region * region,
    GError ** err)
{
  guint n = g_strv_length (q->labels), best = 0;
  gfloat *lp = g_new (gfloat, n);
  GValue labels = G_VALUE_INIT, scores = G_VALUE_INIT, v = G_VALUE_INIT;
  GstStructure *result = NULL;
  CobraTimings timings;
  gdouble sum = 0;

  if (!cobra_session_score_labels (self->session, q->question, (const char *const *) q->labels,
          (int) n, lp, err))
    goto out;
  for (guint i = 1; i < n; i++)
    if (lp[i] > lp[best])
      best = i;
  for (guint i = 0; i < n; i++)
    sum += exp (lp[i] - lp[best]);
  cobra_session_get_timings (self->session, &timings);
  result = result_new (job, q, region, q->labels[best], "label", &timings);
  gst_value_array_init (&labels, n);
  gst_value_array_init (&scores, n);
  for (guint i = 0; i < n; i++) {
    g_value_init (&v, G_TYPE_STRING);
    g_value_set_string (&v, q->labels[i]);
    gst_value_array_append_and_take_value (&labels, &v);
    g_value_init (&v, G_TYPE_DOUBLE);
    g_value_set_double (&v, lp[i]);
    gst_value_array_append_and_take_value (&scores, &v);
  }
  gst_structure_set (result, "label", G_TYPE_STRING, q->labels[best],
      "confidence", G_TYPE_DOUBLE, 1.0 / sum, NULL);
  gst_structure_take_value (result, "labels", &labels);
  gst_structure_take_value (result, "scores", &scores);
out:
  g_free (lp);
  return result;
}

/* Generates the answer to a question. */
static GstStructure *
generate (GstCobraVlm * self, const Job * job, const Question * q, const Region * region,
    GError ** err)
{
  Partial partial = { self, job, q, g_string_new (NULL) };
  CobraTimings timings;
  GstStructure *result = NULL;
  char *answer;

  answer = cobra_session_ask (self->session, q->question, &job->params,
      job->partial_messages ? on_token : NULL, &partial, err);
  g_string_free (partial.text, TRUE);
  if (answer) {
    cobra_session_get_timings (self->session, &timings);
    warn_truncated (self, q, &timings);
    result = result_new (job, q, region, answer,
        stop_reason_name (timings.stop_reason), &timings);
  }
  g_free (answer);
  return result;
}

/* Answers one question (about `region`, or the whole image set); FALSE when the job was
 * interrupted meanwhile. */
static gboolean
answer_question (GstCobraVlm * self, const Job * job, const Question * q, const Region * region)
{
  GError *err = NULL;
  GstStructure *result = q->labels ? score_labels (self, job, q, region, &err) :
      generate (self, job, q, region, &err);
  const gchar *why;

  if (result) {
    deliver (self, job, result);
    return TRUE;
  }
  why = job_interrupted (self, job, err);
  if (why == NULL && q->labels) {
    gchar *list = g_strjoinv (",", q->labels);

    /* once per label list, not on every sampled frame */
    if (g_strcmp0 (list, self->failed_labels) != 0)
      GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS, ("Could not score the labels: %s",
              err->message), ("labels: %s", list));
    g_free (self->failed_labels);
    self->failed_labels = list;
  } else if (why == NULL) {
    GST_ELEMENT_WARNING (self, LIBRARY, FAILED,
        ("Could not answer \"%s\" about the frame at %" GST_TIME_FORMAT ": %s",
            q->question, GST_TIME_ARGS (job->pts), err->message), ("%s", err->message));
  }
  post_unanswered (self, q, job->pts, why ? why : err->message);
  g_error_free (err);
  return why == NULL;
}

/* A job that waited for its turn while a newer frame became due: its asks go back to the front
 * of the queue (for that newer frame), its frame counts as skipped rather than analysed. */
void
job_retire (GstCobraVlm * self, Job * job)
{
  Question *q;

  GST_OBJECT_LOCK (self);
  while ((q = g_queue_pop_tail (&job->questions))) {
    if (q->request_id)
      g_queue_push_head (&self->asks, q);
    else
      question_free (q);
  }
  self->frames_analyzed--;
  self->frames_skipped++;
  GST_OBJECT_UNLOCK (self);
  job_free (job);
}

/* Posts an unanswered outcome for every question left in a job, and frees it. */
void
job_abandon (GstCobraVlm * self, Job * job, const gchar * reason)
{
  Question *q;

  while ((q = g_queue_pop_head (&job->questions))) {
    post_unanswered (self, q, job->pts, reason);
    question_free (q);
  }
  job_free (job);
}

/* Encodes the whole frame, or a region of it; the reason to stop on failure, or NULL. */
static const gchar *
encode (GstCobraVlm * self, const Job * job, const Region * region)
{
  GError *err = NULL;
  CobraImage crop;
  const gchar *why;

  if (region)
    frame_crop (&job->frame, &job->image, region, &crop);
  if (cobra_session_set_image (self->session, region ? &crop : &job->image, &err))
    return NULL;
  why = job_interrupted (self, job, err);
  if (why == NULL) {
    GST_ELEMENT_WARNING (self, LIBRARY, FAILED,
        ("Could not analyse the frame at %" GST_TIME_FORMAT ": %s",
            GST_TIME_ARGS (job->pts), err->message), ("%s", err->message));
    why = "the frame could not be analysed";
  }
  g_error_free (err);
  return why;
}

/* Runs the model on a job (without `lock`): the prompt about each region (or the frame), then
 * the asks about the frame. Leaves the questions it did not answer in the job, and returns why.
 * At EOS only the answer in progress is waited for. */
static const gchar *
run_job (GstCobraVlm * self, Job * job)
{
  Question *q = g_queue_peek_head (&job->questions);
  gboolean frame_encoded = FALSE;
  const gchar *why;

  if (q && q->request_id == 0 && job->regions) {
    q = g_queue_pop_head (&job->questions);
    for (guint i = 0; i < job->regions->len; i++) {
      const Region *r = &g_array_index (job->regions, Region, i);

      if ((why = encode (self, job, r)) || !answer_question (self, job, q, r)
          || (why = job_interrupted (self, job, NULL))) {
        question_free (q);
        return why ? why : "stopped";
      }
    }
    question_free (q);
  }
  while ((q = g_queue_pop_head (&job->questions))) {
    gboolean ok = frame_encoded || (why = encode (self, job, NULL)) == NULL;

    if (!ok) {
      g_queue_push_head (&job->questions, q);
      return why;
    }
    frame_encoded = TRUE;
    ok = answer_question (self, job, q, NULL);
    question_free (q);
    why = job_interrupted (self, job, NULL);
    if (why || !ok)
      return why ? why : "stopped";
  }
  return NULL;
}

/* Runs a job on the calling thread; called with `lock`, which is released meanwhile. A job
 * taken after a cancel is wanted: the session's cancel is cleared here, under the lock that
 * cancel_locked() holds, so no cancel is lost or aimed at the wrong job. */
void
run_job_locked (GstCobraVlm * self, Job * job)
{
  gint64 t0 = g_get_monotonic_time ();
  GstClockTime took;
  gboolean grew = FALSE;
  const gchar *why;

  self->running = job;
  self->cancel_reason = NULL;
  cobra_session_resume (self->session);
  g_mutex_unlock (&self->lock);
  why = run_job (self, job);
  took = (GstClockTime) (g_get_monotonic_time () - t0) * GST_USECOND;
  job_abandon (self, job, why);
  g_mutex_lock (&self->lock);
  self->running = NULL;
  if (took > self->processing && !self->async_mode) {
    /* with headroom, so that analyses a little slower than the slowest so far (a longer
     * answer, a busy machine) do not make the pipeline recompute its latency every time */
    self->processing = took + took / 2;
    grew = TRUE;
  }
  g_cond_broadcast (&self->cond);
  if (grew) {
    /* async=false holds each sampled frame for the analysis: downstream must know */
    g_mutex_unlock (&self->lock);
    GST_INFO_OBJECT (self, "processing latency now %" GST_TIME_FORMAT, GST_TIME_ARGS (took));
    gst_element_post_message (GST_ELEMENT (self),
        gst_message_new_latency (GST_OBJECT (self)));
    g_mutex_lock (&self->lock);
  }
}

/* Called with `lock`: stops the running job and takes the waiting one, which the caller
 * abandons (job_abandon) once the lock is released. */
Job *
cancel_locked (GstCobraVlm * self, const gchar * reason)
{
  Job *waiting = self->job;

  self->job = NULL;
  if (self->running) {
    self->cancel_reason = reason;
    cobra_session_cancel (self->session);
  }
  g_cond_broadcast (&self->cond);
  return waiting;
}
