/* gst-cobra: the cobravlm element's text_src pad
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */

/* Time on text_src follows the video exactly: the streaming thread queues, for every video
 * frame, what covers that frame's time (text mode: the current caption, or an empty buffer
 * before the first; JSON mode: a buffer per new result, GAPs otherwise) before the frame itself
 * leaves the element. So textoverlay (wait-text=true) and muxers always find text up to the video they hold,
 * text time never goes back (an answer is stamped with the frame it is published on; its
 * source-pts says which frame it describes), and no branch waits on the other. The pad's own
 * task pushes the queue, so a text branch that blocks never blocks the video. */

#include <string.h>

#include "gstcobravlm-private.h"

static GstStaticCaps text_caps = GST_STATIC_CAPS ("text/x-raw, format=(string)utf8");

void
text_queue_clear (GstCobraVlm * self)
{
  g_queue_clear_full (&self->text_queue, (GDestroyNotify) gst_mini_object_unref);
}

static gboolean
is_gap (gpointer item)
{
  return GST_IS_EVENT (item) && GST_EVENT_TYPE (item) == GST_EVENT_GAP;
}

static void
time_span (gpointer item, GstClockTime * start, GstClockTime * end)
{
  GstClockTime duration;

  if (GST_IS_BUFFER (item)) {
    *start = GST_BUFFER_PTS (item);
    duration = GST_BUFFER_DURATION (item);
  } else {
    gst_event_parse_gap (GST_EVENT (item), start, &duration);
  }
  *end = GST_CLOCK_TIME_IS_VALID (duration) ? *start + duration : *start;
}

/* Replaces the GAPs at `a` and `a->next` by one GAP over both. */
static void
merge_with_next (GQueue * queue, GList * a)
{
  GstClockTime start, end, next_start, next_end;
  GList *b = a->next;

  time_span (a->data, &start, &end);
  time_span (b->data, &next_start, &next_end);
  gst_mini_object_unref (a->data);
  gst_mini_object_unref (b->data);
  a->data = gst_event_new_gap (start, MAX (end, next_end) - start);
  g_queue_delete_link (queue, b);
}

/* Keeps the queue within MAX_TEXT_QUEUE: the oldest buffer becomes a GAP over its time, merged
 * with GAPs beside it. Called with text_lock. */
static void
text_queue_bound_locked (GstCobraVlm * self)
{
  GstClockTime start, end;
  GList *l;

  if (self->text_queue.length <= MAX_TEXT_QUEUE)
    return;
  for (l = self->text_queue.head; l && !GST_IS_BUFFER (l->data); l = l->next);
  if (l == NULL)
    return;
  GST_OBJECT_LOCK (self);
  self->text_dropped++;
  GST_OBJECT_UNLOCK (self);
  time_span (l->data, &start, &end);
  gst_mini_object_unref (l->data);
  l->data = gst_event_new_gap (start, end - start);
  if (l->next && is_gap (l->next->data))
    merge_with_next (&self->text_queue, l);
  if (l->prev && is_gap (l->prev->data))
    merge_with_next (&self->text_queue, l->prev);
}

/* Queues a buffer or event for text_src. The first item is preceded by stream-start, caps and
 * the video segment; consecutive GAPs merge into one. */
static void
text_queue_push (GstCobraVlm * self, gpointer item)
{
  GstMiniObject *tail;

  g_mutex_lock (&self->text_lock);
  if (self->text_pad == NULL || self->text_flushing)
    goto drop;
  if (!self->text_started) {
    gchar *stream_id;
    GstCaps *caps = gst_static_caps_get (&text_caps);

    if (GST_IS_EVENT (item) && GST_EVENT_TYPE (item) == GST_EVENT_SEGMENT)
      goto drop;                /* the start below sends the current one */
    stream_id = gst_pad_create_stream_id (self->text_pad, GST_ELEMENT (self), "text");
    g_queue_push_tail (&self->text_queue, gst_event_new_stream_start (stream_id));
    g_free (stream_id);
    g_queue_push_tail (&self->text_queue, gst_event_new_caps (caps));
    gst_caps_unref (caps);
    g_queue_push_tail (&self->text_queue,
        gst_event_new_segment (&GST_BASE_TRANSFORM (self)->segment));
    self->text_started = TRUE;
  }

  tail = g_queue_peek_tail (&self->text_queue);
  g_queue_push_tail (&self->text_queue, item);
  if (is_gap (item) && tail && is_gap (tail))
    merge_with_next (&self->text_queue, self->text_queue.tail->prev);
  text_queue_bound_locked (self);
  g_cond_signal (&self->text_cond);
  g_mutex_unlock (&self->text_lock);
  return;

drop:
  g_mutex_unlock (&self->text_lock);
  gst_mini_object_unref (item);
}

void
text_push_segment (GstCobraVlm * self, const GstSegment * segment)
{
  g_mutex_lock (&self->text_lock);
  self->text_position = GST_CLOCK_TIME_NONE;
  g_mutex_unlock (&self->text_lock);
  text_queue_push (self, gst_event_new_segment (segment));
}

void
text_push_eos (GstCobraVlm * self)
{
  text_queue_push (self, gst_event_new_eos ());
}

/* The part of [start, end) not yet covered, or FALSE; advances the text position to `end`. */
static gboolean
text_claim (GstCobraVlm * self, GstClockTime * start, GstClockTime end)
{
  gboolean ok;

  g_mutex_lock (&self->text_lock);
  if (GST_CLOCK_TIME_IS_VALID (self->text_position))
    *start = MAX (*start, self->text_position);
  ok = *start < end;
  if (ok)
    self->text_position = end;
  g_mutex_unlock (&self->text_lock);
  return ok;
}

void
text_set_caption (GstCobraVlm * self, const gchar * text)
{
  g_mutex_lock (&self->text_lock);
  g_free (self->caption);
  self->caption = g_strdup (text);
  g_mutex_unlock (&self->text_lock);
}

static GstBuffer *
text_buffer_new (const gchar * text, GstClockTime start, GstClockTime end)
{
  gsize len = strlen (text);
  GstBuffer *buf = len ? gst_buffer_new_memdup (text, len) : gst_buffer_new ();

  GST_BUFFER_PTS (buf) = start;
  GST_BUFFER_DURATION (buf) = GST_CLOCK_TIME_IS_VALID (end) ? end - start : GST_CLOCK_TIME_NONE;
  return buf;
}

/* Covers a video frame's [start, end) on text_src. Text mode: a buffer with the caption, or an
 * empty one before the first (a subtitle track then starts with the video: mp4mux drops a
 * leading GAP and would shift every cue to the start); JSON mode: a GAP. */
void
text_cover (GstCobraVlm * self, GstClockTime start, GstClockTime end)
{
  gchar *caption = NULL;
  GstCobraVlmTextFormat format;

  if (!GST_CLOCK_TIME_IS_VALID (start) || !text_claim (self, &start, end))
    return;
  GST_OBJECT_LOCK (self);
  format = self->text_format;
  GST_OBJECT_UNLOCK (self);
  if (format == GST_COBRA_VLM_TEXT_FORMAT_JSON) {
    text_queue_push (self, gst_event_new_gap (start, end - start));
    return;
  }
  g_mutex_lock (&self->text_lock);
  caption = g_strdup (self->caption ? self->caption : "");
  g_mutex_unlock (&self->text_lock);
  text_queue_push (self, text_buffer_new (caption, start, end));
  g_free (caption);
}

/* JSON mode: one buffer per result, stamped with the frame it is published on (or the text
 * position, if later), without a duration: it is an event, not a caption to show. */
void
text_push_result (GstCobraVlm * self, const GstStructure * result, GstClockTime start,
    GstClockTime end)
{
  GstCobraVlmTextFormat format;
  gchar *json;

  GST_OBJECT_LOCK (self);
  format = self->text_format;
  GST_OBJECT_UNLOCK (self);
  if (format != GST_COBRA_VLM_TEXT_FORMAT_JSON)
    return;
  g_mutex_lock (&self->text_lock);
  if (GST_CLOCK_TIME_IS_VALID (self->text_position) && GST_CLOCK_TIME_IS_VALID (start))
    start = MAX (start, self->text_position);
  g_mutex_unlock (&self->text_lock);
  json = result_to_json (result);
  text_queue_push (self, text_buffer_new (json, start, GST_CLOCK_TIME_NONE));
  g_free (json);
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

/* Empties the queue and forgets the stream (stream-start, caps and segment are queued again
 * before the next item: sending them again is harmless), its time and its caption; wakes the
 * task. Called with text_lock. */
static void
text_restart_locked (GstCobraVlm * self)
{
  text_queue_clear (self);
  self->text_started = FALSE;
  self->text_position = GST_CLOCK_TIME_NONE;
  g_clear_pointer (&self->caption, g_free);
  g_cond_signal (&self->text_cond);
}

static gboolean
text_activate_mode (GstPad * pad, GstObject * parent, GstPadMode mode, gboolean active)
{
  GstCobraVlm *self = GST_COBRA_VLM (parent);

  if (mode != GST_PAD_MODE_PUSH)
    return FALSE;
  g_mutex_lock (&self->text_lock);
  self->text_flushing = !active;
  if (!active)
    text_restart_locked (self);
  g_mutex_unlock (&self->text_lock);
  if (active)
    return gst_pad_start_task (pad, (GstTaskFunction) text_loop, pad, NULL);
  return gst_pad_stop_task (pad);
}

/* Forwards a flush to text_src: the task stops (and its queue empties) until the flush ends. */
void
text_flush (GstCobraVlm * self, GstEvent * event)
{
  gboolean start = GST_EVENT_TYPE (event) == GST_EVENT_FLUSH_START;
  GstPad *pad;

  g_mutex_lock (&self->text_lock);
  pad = self->text_pad ? gst_object_ref (self->text_pad) : NULL;
  self->text_flushing = start;
  text_restart_locked (self);
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

GstPad *
text_pad_new (GstCobraVlm * self, GstPadTemplate * templ)
{
  GstPad *pad;

  g_mutex_lock (&self->text_lock);
  if (self->text_pad) {
    g_mutex_unlock (&self->text_lock);
    GST_ELEMENT_WARNING (self, CORE, PAD, ("There is only one text_src pad."),
        ("a second text_src was requested; use a tee to feed several branches"));
    return NULL;
  }
  pad = gst_pad_new_from_template (templ, "text_src");
  gst_pad_set_activatemode_function (pad, text_activate_mode);
  gst_pad_use_fixed_caps (pad);
  self->text_pad = pad;
  self->text_started = FALSE;
  self->text_position = GST_CLOCK_TIME_NONE;
  g_mutex_unlock (&self->text_lock);

  /* activates it too when the element is already running */
  gst_element_add_pad (GST_ELEMENT (self), pad);
  return pad;
}

void
text_pad_release (GstCobraVlm * self, GstPad * pad)
{
  g_mutex_lock (&self->text_lock);
  if (pad == self->text_pad)
    self->text_pad = NULL;
  g_mutex_unlock (&self->text_lock);
  gst_pad_set_active (pad, FALSE);
  gst_element_remove_pad (GST_ELEMENT (self), pad);
}
