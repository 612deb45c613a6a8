/* gst-cobra: one loaded model and one scheduler per model file in the process, shared by every
 * cobravlm that names it.
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Library General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 */

/* The engine reads the weights into memory (a model file rewritten in place must not kill the
 * process), so N streams on one model would hold N copies: sharing one load keeps them at one.
 * A model is immutable once loaded, so sessions on any thread may use it at once. Loads are
 * keyed by the file's identity (device, inode, size, modification time): a file rewritten or
 * replaced since is loaded anew by the next element that starts, while running elements keep
 * the model they have.
 *
 * The scheduler runs the jobs of all the elements on one model: a first-come queue of elements
 * (each has at most one job waiting, so every stream gets its turn), and workers that start a
 * job only while the threads of the jobs running fit in the machine's cores. With n-threads=0
 * (every core) jobs run one after another; with n-threads=1 on 16 cores, 16 at once. So N
 * streams never run more threads than cores, and cores idle only when no stream has work.
 *
 * The table of models is the plugin's only global state, under `models_lock`; each model's
 * scheduler state is under its own `lock`. Lock order: an element's `lock` is never held while
 * taking a scheduler's. */

#include <omp.h>
#include <glib/gstdio.h>

#include "gstcobravlm-private.h"

struct _SharedModel
{
  CobraModel *model;
  gchar *key;
  guint users;                  /* under models_lock */

  GMutex lock;
  GCond cond;
  GQueue waiting;               /* of GstCobraVlm (a reference each) with a job in self->job */
  guint cores, busy_threads, running;
  guint idle;                   /* workers without a job, counted from their creation */
  GPtrArray *workers;           /* of GThread */
  gboolean closing;
};

static GMutex models_lock;
static GHashTable *models_by_key;       /* key -> SharedModel */

static gchar *
file_key (const gchar * path)
{
  GStatBuf st;

  if (g_stat (path, &st) != 0)
    return NULL;
  return g_strdup_printf ("%" G_GUINT64_FORMAT ":%" G_GUINT64_FORMAT ":%" G_GINT64_FORMAT
      ":%" G_GINT64_FORMAT ".%09ld", (guint64) st.st_dev, (guint64) st.st_ino,
      (gint64) st.st_size, (gint64) st.st_mtim.tv_sec, (long) st.st_mtim.tv_nsec);
}

static SharedModel *
shared_model_new (CobraModel * model, gchar * key)
{
  SharedModel *shared = g_new0 (SharedModel, 1);

  shared->model = model;
  shared->key = key;
  shared->users = 1;
  g_mutex_init (&shared->lock);
  g_cond_init (&shared->cond);
  g_queue_init (&shared->waiting);
  shared->cores = (guint) omp_get_num_procs ();
  shared->workers = g_ptr_array_new ();
  return shared;
}

/* The model in `path`, loaded now or shared with the elements already using that file. */
SharedModel *
shared_model_acquire (const gchar * path, GError ** error)
{
  gchar *key = file_key (path);
  SharedModel *shared = NULL;
  CobraModel *model;

  g_mutex_lock (&models_lock);
  if (models_by_key == NULL)
    models_by_key = g_hash_table_new (g_str_hash, g_str_equal);
  if (key)
    shared = g_hash_table_lookup (models_by_key, key);
  if (shared) {
    shared->users++;
    g_free (key);
    g_mutex_unlock (&models_lock);
    return shared;
  }
  /* loading under the lock: a second element on the same file waits for this load instead of
   * reading the file once more */
  model = cobra_model_load (path, error);
  if (model) {
    shared = shared_model_new (model, key);
    if (key)
      g_hash_table_insert (models_by_key, key, shared);
  } else {
    g_free (key);
  }
  g_mutex_unlock (&models_lock);
  return shared;
}

CobraModel *
shared_model_get (const SharedModel * shared)
{
  return shared->model;
}

/* Gives a model back; the last user stops its workers (no element is started any more, so none
 * has a job) and frees it. */
void
shared_model_release (SharedModel * shared)
{
  if (shared == NULL)
    return;
  g_mutex_lock (&models_lock);
  if (--shared->users > 0) {
    g_mutex_unlock (&models_lock);
    return;
  }
  if (shared->key && g_hash_table_lookup (models_by_key, shared->key) == shared)
    g_hash_table_remove (models_by_key, shared->key);
  g_mutex_unlock (&models_lock);

  g_mutex_lock (&shared->lock);
  shared->closing = TRUE;
  g_cond_broadcast (&shared->cond);
  g_mutex_unlock (&shared->lock);
  for (guint i = 0; i < shared->workers->len; i++)
    g_thread_join (g_ptr_array_index (shared->workers, i));
  g_ptr_array_unref (shared->workers);
  g_mutex_clear (&shared->lock);
  g_cond_clear (&shared->cond);
  cobra_model_free (shared->model);
  g_free (shared->key);
  g_free (shared);
}

/* Threads a job of `self` keeps busy: its n-threads, all cores for 0. */
static guint
job_threads (SharedModel * shared, GstCobraVlm * self)
{
  return self->job_threads ? MIN (self->job_threads, shared->cores) : shared->cores;
}

/* Called with the scheduler's lock: the next element whose job fits beside those running. */
static GstCobraVlm *
next_fitting (SharedModel * shared)
{
  GstCobraVlm *self = g_queue_peek_head (&shared->waiting);

  /* first come, first served: a job that does not fit yet holds the others back */
  if (self == NULL || (shared->running > 0 &&
          shared->busy_threads + job_threads (shared, self) > shared->cores))
    return NULL;
  return g_queue_pop_head (&shared->waiting);
}

static gpointer
scheduler_worker (gpointer data)
{
  SharedModel *shared = data;

  g_mutex_lock (&shared->lock);
  for (;;) {
    GstCobraVlm *self;
    guint threads;
    Job *job;

    /* idle from its start (counted by scheduler_submit) until it takes a job */
    while (!shared->closing && (self = next_fitting (shared)) == NULL)
      g_cond_wait (&shared->cond, &shared->lock);
    if (shared->closing)
      break;
    shared->idle--;
    threads = job_threads (shared, self);
    shared->busy_threads += threads;
    shared->running++;
    g_mutex_unlock (&shared->lock);

    g_mutex_lock (&self->lock);
    job = self->job;
    self->job = NULL;
    if (job)
      run_job_locked (self, job);
    g_mutex_unlock (&self->lock);
    gst_object_unref (self);

    g_mutex_lock (&shared->lock);
    shared->busy_threads -= threads;
    shared->running--;
    shared->idle++;
    g_cond_broadcast (&shared->cond);
  }
  g_mutex_unlock (&shared->lock);
  return NULL;
}

/* Queues `self`, which has just put a job in self->job, for its turn. A worker is started when
 * none is free and the job could run beside those running. FALSE when there is no worker at all
 * and none could be started (the job would never run). */
gboolean
scheduler_submit (SharedModel * shared, GstCobraVlm * self, GError ** error)
{
  gboolean ok = TRUE;

  g_mutex_lock (&shared->lock);
  /* a new worker only for a job that could run now: workers never outnumber running jobs */
  if (shared->idle == 0 && shared->workers->len < shared->cores && (shared->running == 0 ||
          shared->busy_threads + job_threads (shared, self) <= shared->cores)) {
    GThread *t = g_thread_try_new ("cobravlm", scheduler_worker, shared, error);

    if (t) {
      g_ptr_array_add (shared->workers, t);
      shared->idle++;           /* it cannot take the lock before we let it go */
    }
    ok = t || shared->workers->len > 0;
  }
  if (ok && g_queue_find (&shared->waiting, self) == NULL)
    g_queue_push_tail (&shared->waiting, gst_object_ref (self));
  g_cond_broadcast (&shared->cond);
  g_mutex_unlock (&shared->lock);
  return ok;
}

/* Takes `self` out of the queue (its job was dropped, or it stops). */
void
scheduler_withdraw (SharedModel * shared, GstCobraVlm * self)
{
  gboolean found;

  g_mutex_lock (&shared->lock);
  found = g_queue_remove (&shared->waiting, self);
  g_cond_broadcast (&shared->cond);
  g_mutex_unlock (&shared->lock);
  if (found)
    gst_object_unref (self);
}
