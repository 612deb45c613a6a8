/* gst-cobra: one loaded model per model file in the process, shared by every cobravlm that names
 * it.
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
 * the model they have. This table is the plugin's only global state, under `models_lock`. */

#include <glib/gstdio.h>

#include "gstcobravlm-private.h"

typedef struct
{
  CobraModel *model;
  gchar *key;
  guint users;
} SharedModel;

static GMutex models_lock;
static GHashTable *models_by_key;       /* key -> SharedModel */
static GHashTable *models_by_model;     /* CobraModel -> the same SharedModel */

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

/* The model in `path`, loaded now or shared with the elements already using that file. */
CobraModel *
shared_model_acquire (const gchar * path, GError ** error)
{
  gchar *key = file_key (path);
  SharedModel *shared = NULL;
  CobraModel *model;

  g_mutex_lock (&models_lock);
  if (models_by_key == NULL) {
    models_by_key = g_hash_table_new (g_str_hash, g_str_equal);
    models_by_model = g_hash_table_new (NULL, NULL);
  }
  if (key)
    shared = g_hash_table_lookup (models_by_key, key);
  if (shared) {
    shared->users++;
    g_free (key);
    g_mutex_unlock (&models_lock);
    return shared->model;
  }
  /* loading under the lock: a second element on the same file waits for this load instead of
   * reading the file once more */
  model = cobra_model_load (path, error);
  if (model && key) {
    shared = g_new0 (SharedModel, 1);
    shared->model = model;
    shared->key = key;
    shared->users = 1;
    g_hash_table_insert (models_by_key, shared->key, shared);
    g_hash_table_insert (models_by_model, model, shared);
  } else {
    g_free (key);
  }
  g_mutex_unlock (&models_lock);
  return model;
}

/* Gives a model back; the last user frees it. */
void
shared_model_release (CobraModel * model)
{
  SharedModel *shared;

  if (model == NULL)
    return;
  g_mutex_lock (&models_lock);
  shared = models_by_model ? g_hash_table_lookup (models_by_model, model) : NULL;
  if (shared && --shared->users > 0) {
    g_mutex_unlock (&models_lock);
    return;
  }
  if (shared) {
    g_hash_table_remove (models_by_key, shared->key);
    g_hash_table_remove (models_by_model, model);
    g_free (shared->key);
    g_free (shared);
  }
  g_mutex_unlock (&models_lock);
  cobra_model_free (model);
}
