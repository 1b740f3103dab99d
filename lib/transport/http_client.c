/*
 * Dialer side of the http://, https:// and unix:// transports, on libcurl.
 * Synchronous calls run on the caller's thread with pooled easy handles
 * (keep-alive reuse); asynchronous calls run on one I/O thread per client
 * driving a curl multi handle. Both share setup_xfer/finish_xfer.
 */
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>
#include "core/plugin.h"
#include "transport/transport.h"
#include "transport/url.h"

typedef struct xfer {
  dsysi_call *call;
  CURL *e;
  struct curl_slist *hl;
  dsys_reply *reply;
  dsysi_buf body;
  size_t received;
  int too_big;
} xfer;

typedef struct curl_state {
  pthread_mutex_t mu;
  CURL **idle;
  size_t nidle, capidle;
  CURLM *multi;
  pthread_t thr;
  int started, stop;
  xfer **queue; /* submitted, not yet in the multi handle */
  size_t nq, capq;
  xfer **active;
  size_t nact, capact;
} curl_state;

static const dsysi_dialer_ops http_ops; /* at the end */

static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static curl_state *get_state(dsys_client *c) {
  pthread_once(&g_curl_once, curl_init_once);
  pthread_mutex_t *mu = dsysi_client_lock(c);
  void **slot = dsysi_client_slot(c, &http_ops);
  pthread_mutex_lock(mu);
  curl_state *s = *slot;
  if (!s && (s = calloc(1, sizeof *s))) {
    pthread_mutex_init(&s->mu, NULL);
    *slot = s;
  }
  pthread_mutex_unlock(mu);
  return s;
}

static int push(void ***arr, size_t *n, size_t *cap, void *v) {
  if (dsysi_grow(arr, cap, *n + 1, sizeof **arr, 16)) return DSYS_ENOMEM;
  (*arr)[(*n)++] = v;
  return 0;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud) {
  xfer *x = ud;
  size_t len = size * n;
  if (len >= 5 && !strncmp(buf, "HTTP/", 5)) {
    /* A new status line (after 100 Continue or a redirect): start over. */
    dsysi_hdrs_free(&x->reply->hdrs);
    return len;
  }
  char *colon = memchr(buf, ':', len);
  if (!colon) return len;
  size_t nl = (size_t)(colon - buf);
  const char *v = colon + 1;
  size_t vl = len - nl - 1;
  while (vl && (*v == ' ' || *v == '\t')) v++, vl--;
  while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' ')) vl--;
  if (dsysi_hdrs_add(&x->reply->hdrs, buf, nl, v, vl)) return 0;
  return len;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud) {
  xfer *x = ud;
  size_t len = size * n;
  dsysi_call *call = x->call;
  if (call->on_chunk) {
    call->on_chunk(buf, len, call->chunk_ud);
    return len;
  }
  if (x->body.len + len > call->max_response) {
    x->too_big = 1;
    return 0; /* abort the transfer */
  }
  return dsysi_buf_append(&x->body, buf, len) ? 0 : len;
}

static int setup_xfer(xfer *x) {
  dsysi_call *call = x->call;
  CURL *e = x->e;
  dsysi_url u;
  int rc = dsysi_url_parse(call->url, &u);
  if (rc) return rc;
  dsysi_buf url = {0};
  if (!strcmp(call->ops->scheme, "unix")) {
    curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, u.path);
    dsysi_buf_printf(&url, "http://localhost%s", call->path);
  } else {
    int v6 = strchr(u.host, ':') != NULL;
    dsysi_buf_printf(&url, "%s://%s%s%s:%d%s%s", u.scheme, v6 ? "[" : "", u.host,
                     v6 ? "]" : "", u.port, u.path, call->path);
  }
  dsysi_url_free(&u);
  if (url.oom) return DSYS_ENOMEM;
  curl_easy_setopt(e, CURLOPT_URL, url.data);
  dsysi_buf_free(&url);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)call->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)call->connect_timeout_ms);
  if (!strcmp(call->ops->scheme, "https")) {
    /* Verification is curl's default; set it anyway so a reused handle
     * (curl_easy_reset) can never inherit an insecure setting. */
    const dsys_client_options *o = dsysi_client_options(call->client);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, o->tls_insecure ? 0L : 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, o->tls_insecure ? 0L : 2L);
    if (o->tls_ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, o->tls_ca_file);
    if (o->tls_cert_file) curl_easy_setopt(e, CURLOPT_SSLCERT, o->tls_cert_file);
    if (o->tls_key_file) curl_easy_setopt(e, CURLOPT_SSLKEY, o->tls_key_file);
  } else {
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
  }
  if (!strcmp(call->method, "HEAD")) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(call->method, "GET") != 0 || call->body_len) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, call->method);
  }
  if (call->body_len || !strcmp(call->method, "POST") ||
      !strcmp(call->method, "PUT") || !strcmp(call->method, "PATCH")) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)call->body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body);
  }
  /* No 100-continue round trip, and no invented Content-Type. */
  x->hl = curl_slist_append(x->hl, "Expect:");
  if (!dsysi_hdrs_get(&call->hdrs, "Content-Type"))
    x->hl = curl_slist_append(x->hl, "Content-Type:");
  for (size_t i = 0; i < call->hdrs.n; i++) {
    dsysi_buf h = {0};
    dsysi_buf_printf(&h, "%s: %s", call->hdrs.v[i].name, call->hdrs.v[i].value);
    /* curl drops "Name:" with an empty value; "Name;" sends it empty. */
    if (!call->hdrs.v[i].value[0]) {
      dsysi_buf_free(&h);
      dsysi_buf_printf(&h, "%s;", call->hdrs.v[i].name);
    }
    struct curl_slist *nl = h.oom ? NULL : curl_slist_append(x->hl, h.data);
    dsysi_buf_free(&h);
    if (!nl) return DSYS_ENOMEM;
    x->hl = nl;
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hl);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  return 0;
}

static int map_curl(CURLcode cc, const xfer *x) {
  switch (cc) {
  case CURLE_OK:
    return 0;
  case CURLE_COULDNT_CONNECT:
    return DSYS_ECONNREFUSED;
  case CURLE_COULDNT_RESOLVE_HOST:
    return DSYS_ERESOLVE;
  case CURLE_OPERATION_TIMEDOUT:
    return DSYS_ETIMEDOUT;
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
    return DSYS_ECONNRESET;
  case CURLE_WRITE_ERROR:
    return x->too_big ? DSYS_ETOOBIG : DSYS_ENOMEM;
  case CURLE_OUT_OF_MEMORY:
    return DSYS_ENOMEM;
  case CURLE_URL_MALFORMAT:
    return DSYS_EURL;
  default:
    return DSYS_EPROTO;
  }
}

/* Turn a finished transfer into (err, reply); the reply goes to *out. */
static int finish_xfer(xfer *x, CURLcode cc, dsys_reply **out) {
  int err = map_curl(cc, x);
  if (!err) {
    long code = 0;
    curl_easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &code);
    x->reply->status = (int)code;
    x->reply->body = dsysi_buf_steal(&x->body, &x->reply->body_len);
    if (!x->reply->body) err = DSYS_ENOMEM;
  }
  if (!err) {
    *out = x->reply;
    x->reply = NULL;
  }
  return err;
}

static xfer *xfer_new(dsysi_call *call, CURL *e) {
  xfer *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  x->call = call;
  x->e = e;
  x->reply = dsysi_reply_new(0);
  if (!x->reply) {
    free(x);
    return NULL;
  }
  return x;
}

static void xfer_free(xfer *x) {
  curl_slist_free_all(x->hl);
  dsys_reply_free(x->reply);
  dsysi_buf_free(&x->body);
  free(x);
}

static int curl_call_sync(dsysi_call *call, dsys_reply **out) {
  curl_state *s = get_state(call->client);
  if (!s) return DSYS_ENOMEM;
  CURL *e = NULL;
  pthread_mutex_lock(&s->mu);
  if (s->nidle) e = s->idle[--s->nidle];
  pthread_mutex_unlock(&s->mu);
  if (e) curl_easy_reset(e); /* keeps the connection cache */
  else if (!(e = curl_easy_init())) return DSYS_ENOMEM;
  xfer *x = xfer_new(call, e);
  if (!x) {
    curl_easy_cleanup(e);
    return DSYS_ENOMEM;
  }
  int rc = setup_xfer(x);
  if (!rc) rc = finish_xfer(x, curl_easy_perform(e), out);
  xfer_free(x);
  pthread_mutex_lock(&s->mu);
  if (push((void ***)&s->idle, &s->nidle, &s->capidle, e)) curl_easy_cleanup(e);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static void complete_xfer(xfer *x, CURLcode cc) {
  dsys_reply *reply = NULL;
  int err = finish_xfer(x, cc, &reply);
  dsysi_call *call = x->call;
  curl_easy_cleanup(x->e);
  xfer_free(x);
  dsysi_call_complete(call, err, reply);
  dsysi_call_unref(call);
}

static void remove_active(curl_state *s, xfer *x) {
  for (size_t i = 0; i < s->nact; i++)
    if (s->active[i] == x) {
      s->active[i] = s->active[--s->nact];
      return;
    }
}

static void *io_thread(void *arg) {
  curl_state *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    int stop = s->stop;
    xfer **q = s->queue;
    size_t nq = s->nq;
    s->queue = NULL;
    s->nq = s->capq = 0;
    for (size_t i = 0; i < nq; i++)
      push((void ***)&s->active, &s->nact, &s->capact, q[i]);
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < nq; i++) curl_multi_add_handle(s->multi, q[i]->e);
    free(q);
    if (stop) break;
    int running = 0;
    curl_multi_perform(s->multi, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(s->multi, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      xfer *x = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
      CURLcode cc = msg->data.result;
      curl_multi_remove_handle(s->multi, x->e);
      pthread_mutex_lock(&s->mu);
      remove_active(s, x);
      pthread_mutex_unlock(&s->mu);
      complete_xfer(x, cc);
    }
    curl_multi_poll(s->multi, NULL, 0, 1000, NULL);
  }
  return NULL;
}

static int curl_call(dsysi_call *call) {
  curl_state *s = get_state(call->client);
  if (!s) return DSYS_ENOMEM;
  CURL *e = curl_easy_init();
  if (!e) return DSYS_ENOMEM;
  xfer *x = xfer_new(call, e);
  if (!x) {
    curl_easy_cleanup(e);
    return DSYS_ENOMEM;
  }
  int rc = setup_xfer(x);
  pthread_mutex_lock(&s->mu);
  if (!rc && s->stop) rc = DSYS_ECLOSED;
  if (!rc && !s->started) {
    s->multi = curl_multi_init();
    if (!s->multi || pthread_create(&s->thr, NULL, io_thread, s)) {
      if (s->multi) curl_multi_cleanup(s->multi);
      s->multi = NULL;
      rc = DSYS_ENOMEM;
    } else {
      s->started = 1;
    }
  }
  if (!rc) rc = push((void ***)&s->queue, &s->nq, &s->capq, x);
  pthread_mutex_unlock(&s->mu);
  if (rc) {
    curl_easy_cleanup(e);
    xfer_free(x);
    return rc;
  }
  curl_multi_wakeup(s->multi);
  return 0;
}

static void curl_client_free(dsys_client *c) {
  void **slot = dsysi_client_slot(c, &http_ops);
  curl_state *s = *slot;
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  int started = s->started;
  pthread_mutex_unlock(&s->mu);
  if (started) {
    curl_multi_wakeup(s->multi);
    pthread_join(s->thr, NULL);
    /* Whatever did not finish is canceled: exactly one completion each. */
    for (size_t i = 0; i < s->nact; i++) {
      curl_multi_remove_handle(s->multi, s->active[i]->e);
      xfer *x = s->active[i];
      dsysi_call *call = x->call;
      curl_easy_cleanup(x->e);
      xfer_free(x);
      dsysi_call_complete(call, DSYS_ECANCELED, NULL);
      dsysi_call_unref(call);
    }
    curl_multi_cleanup(s->multi);
  }
  free(s->active);
  free(s->queue);
  for (size_t i = 0; i < s->nidle; i++) curl_easy_cleanup(s->idle[i]);
  free(s->idle);
  pthread_mutex_destroy(&s->mu);
  free(s);
  *slot = NULL;
}

/* http, https (libcurl's TLS) and unix share every op and, as one engine,
 * one per-client state. */
#define CURL_DIALER(SCHEME)                \
  {                                        \
      .version = DSYSI_DIALER_OPS_VERSION, \
      .scheme = SCHEME,                    \
      .engine = "curl",                    \
      .call = curl_call,                   \
      .call_sync = curl_call_sync,         \
      .client_free = curl_client_free,     \
  }

static const dsysi_dialer_ops http_ops = CURL_DIALER("http");
static const dsysi_dialer_ops https_ops = CURL_DIALER("https");
static const dsysi_dialer_ops unix_ops = CURL_DIALER("unix");

DSYSI_PLUGINS(http_client) = {{"dialer", &http_ops}, {"dialer", &https_ops},
                              {"dialer", &unix_ops}, {0}};
