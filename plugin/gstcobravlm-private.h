/* gst-cobra: the cobravlm element's insides, shared by its files:
 * gstcobravlm.c (the element: properties, caps, states, the streaming thread),
 * cobravlm-worker.c (jobs: what runs the model for one frame),
 * cobravlm-text.c (the text_src pad and its bounded queue), cobravlm-json.c (results as JSON),
 * cobravlm-frame.c (regions, crops and thumbnails read from a frame),
 * cobravlm-models.c (one loaded model and one scheduler per file in the process).
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */
#ifndef __GST_COBRA_VLM_PRIVATE_H__
#define __GST_COBRA_VLM_PRIVATE_H__

#include "cobra.h"
#include "gstcobravlm.h"

G_BEGIN_DECLS

GST_DEBUG_CATEGORY_EXTERN (gst_cobra_vlm_debug);
#define GST_CAT_DEFAULT gst_cobra_vlm_debug

/* Questions waiting for a frame; more are refused (ask returns 0) so a flood of `ask` calls
 * cannot grow memory or make EOS wait for hours. */
#define MAX_PENDING_ASKS 64

/* Items text_src may hold while its branch does not take them (a muxer waiting for an encoder's
 * look-ahead holds a few seconds of video: ~200 items at 60 fps). Past this the oldest caption
 * buffers become GAP events over the same time, so time stays covered and memory bounded. */
#define MAX_TEXT_QUEUE 1024

/* Change gating compares THUMB_SIDE x THUMB_SIDE luma thumbnails, each cell the mean of
 * THUMB_SAMPLES x THUMB_SAMPLES pixels: fine enough that an object a tenth of the frame wide
 * moves several cells, coarse enough that sensor noise averages out. */
#define THUMB_SIDE 32
#define THUMB_SAMPLES 4

/* How text_src is written. */
typedef enum
{
  GST_COBRA_VLM_TEXT_FORMAT_TEXT,       /* the current caption on every frame, for overlays */
  GST_COBRA_VLM_TEXT_FORMAT_JSON,       /* one JSON object per result, for files and sockets */
} GstCobraVlmTextFormat;

#define GST_TYPE_COBRA_VLM_TEXT_FORMAT (gst_cobra_vlm_text_format_get_type ())
GType gst_cobra_vlm_text_format_get_type (void);

/* One loaded model and its scheduler, shared by the elements on one model file. */
typedef struct _SharedModel SharedModel;

/* A question for one frame: the prompt (request_id 0) or an `ask`. With labels, the answer is
 * the best of them (label mode) instead of generated text. */
typedef struct
{
  gchar *question;
  guint request_id;
  gchar **labels;
} Question;

/* A region of a frame to analyse on its own (from a GstVideoRegionOfInterestMeta), clamped to
 * the frame. */
typedef struct
{
  guint id;
  GQuark type;
  gint x, y, w, h;
} Region;

/* One sampled frame and the questions to answer about it. */
typedef struct
{
  GstBuffer *copy;              /* element-owned copy of the frame */
  GstVideoFrame frame;          /* `copy`, mapped while the job lives */
  CobraImage image;             /* points into `frame` */
  GQueue questions;             /* of Question: the prompt (if due) first, then the asks */
  GArray *regions;              /* of Region: the prompt is asked about each; NULL = the frame */
  CobraParams params;
  gboolean partial_messages;
  GstClockTime pts, running_time;
  gint64 arrival_us;            /* g_get_monotonic_time() when the frame arrived */
  GstStructure *origin;         /* fields every result of this frame carries (stream, clock) */
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
  GstCobraVlmTextFormat text_format;
  gchar **labels;               /* label mode when set */
  gdouble label_threshold;
  gboolean label_changes_only;
  gboolean roi_mode;
  gchar **roi_types;            /* NULL = every type */
  guint max_rois;
  gdouble roi_margin;
  gdouble change_threshold;
  guint64 frames_analyzed, frames_skipped, frames_unchanged, asks_refused, text_dropped;
  guint64 rois_skipped;
  GQueue asks;                  /* of Question, for the next frame */
  guint next_request_id;
  gchar *stream_id;             /* from the last stream-start */

  /* loaded (or shared) in NULL->READY, given back in READY->NULL */
  SharedModel *shared;
  /* made in start(), freed in stop() */
  CobraSession *session;
  gboolean async_mode;          /* `async` as it was at start */
  guint job_threads;            /* `n-threads` as it was at start (0 = all cores) */

  /* job slot and results, under `lock`; `cond` signals any change */
  GMutex lock;
  GCond cond;
  Job *job;                     /* waiting for its turn in the scheduler */
  Job *running;                 /* being answered by a scheduler worker */
  const gchar *cancel_reason;   /* why the running job was cancelled ("flushed", "stopped") */
  gboolean draining;            /* EOS: finish the answer in progress, leave the rest */
  gboolean shutting_down;
  guint epoch;
  guint64 seq;
  GQueue done;                  /* of GstStructure results not yet published */
  GstClockTime processing;      /* sync mode's latency: 1.5 x the longest analysis so far */

  /* the thread running jobs: the last over-long question and the last failing labels warned
   * about, and the last label published (label-changes-only) */
  gchar *truncated_question;
  gchar *failed_labels;
  gchar *last_label;

  /* streaming-thread state */
  CobraPixelFormat format;
  CobraYuvMatrix yuv_matrix;
  GstClockTime frame_duration;  /* from the caps' framerate, when the buffers have none */
  GstClockTime last_sampled;    /* running time of the last frame analysed for the prompt */
  guint8 thumb[THUMB_SIDE * THUMB_SIDE];        /* of that frame, for change gating */
  gboolean has_thumb;
  GstStructure *latest;         /* the prompt's last result, carried by every buffer */
  gboolean fresh;

  /* text_src: the streaming thread queues, the pad's task pushes, so a blocked text branch
   * (textoverlay waiting for video) never blocks the video; under `text_lock` */
  GMutex text_lock;
  GCond text_cond;
  GstPad *text_pad;
  GQueue text_queue;            /* of GstBuffer and GstEvent */
  gboolean text_flushing;
  gboolean text_started;        /* stream-start, caps and segment are queued */
  GstClockTime text_position;   /* end of the time queued so far: text time never goes back */
  gchar *caption;               /* what text mode repeats on every frame */
};

/* cobravlm-models.c */
SharedModel *shared_model_acquire (const gchar * path, GError ** error);
CobraModel *shared_model_get (const SharedModel * shared);
void shared_model_release (SharedModel * shared);
gboolean scheduler_submit (SharedModel * shared, GstCobraVlm * self, GError ** error);
void scheduler_withdraw (SharedModel * shared, GstCobraVlm * self);

/* cobravlm-frame.c */
GArray *frame_regions (GstBuffer * buf, const GstVideoInfo * info, gchar ** types, guint max,
    gdouble margin, guint * skipped);
void frame_crop (const GstVideoFrame * frame, const CobraImage * full, const Region * r,
    CobraImage * out);
void frame_thumbnail (const GstVideoFrame * f, guint8 * thumb);
gdouble thumbnail_difference (const guint8 * a, const guint8 * b);

/* cobravlm-worker.c */
Question *question_new (const gchar * text, guint request_id, gchar ** labels);
void question_free (Question * q);
Job *job_new (GstCobraVlm * self, GstBuffer * buf, gboolean with_prompt, GArray * regions,
    GstClockTime running_time, gint64 arrival_us);
void job_free (Job * job);
void job_abandon (GstCobraVlm * self, Job * job, const gchar * reason);
void job_retire (GstCobraVlm * self, Job * job);
void run_job_locked (GstCobraVlm * self, Job * job);
Job *cancel_locked (GstCobraVlm * self, const gchar * reason);
void post_unanswered (GstCobraVlm * self, const Question * q, GstClockTime pts,
    const gchar * reason);
void post_unanswered_asks (GstCobraVlm * self, const gchar * reason);

/* cobravlm-text.c */
GstPad *text_pad_new (GstCobraVlm * self, GstPadTemplate * templ);
void text_pad_release (GstCobraVlm * self, GstPad * pad);
void text_queue_clear (GstCobraVlm * self);
void text_push_segment (GstCobraVlm * self, const GstSegment * segment);
void text_push_eos (GstCobraVlm * self);
void text_flush (GstCobraVlm * self, GstEvent * event);
void text_set_caption (GstCobraVlm * self, const gchar * text);
void text_push_result (GstCobraVlm * self, const GstStructure * result, GstClockTime start,
    GstClockTime end);
void text_cover (GstCobraVlm * self, GstClockTime start, GstClockTime end);

/* cobravlm-json.c */
gchar *result_to_json (const GstStructure * result);

G_END_DECLS

#endif /* __GST_COBRA_VLM_PRIVATE_H__ */
