/*
 * Listener side of the http:// and unix:// transports, on libmicrohttpd:
 * internal epoll thread pool, suspend/resume for deferred answers and
 * streams (no server thread ever waits). We create the listening socket
 * ourselves (TCP or AF_UNIX) and hand it to MHD, so both schemes share
 * everything else and the bound port can be read back.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <microhttpd.h>
#include "transport/transport.h"
#include "transport/url.h"

typedef struct mhd_lst {
  dsys_server *srv;
  const dsys_transport_ops *ops;
  struct MHD_Daemon *d;
  int fd;
  char url[300];
  char *unix_path;
  int quiesced;
} mhd_lst;

typedef struct mhd_req {
  mhd_lst *l;
  struct MHD_Connection *conn;
  char *target;
  dsysi_buf body;
  int seen;
  int too_big;
  int suspended;
  dsys_request *req;
} mhd_req;

static void *uri_log(void *cls, const char *uri, struct MHD_Connection *conn) {
  mhd_req *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->l = cls;
  m->conn = conn;
  m->target = strdup(uri ? uri : "/");
  return m;
}

static void free_mreq(mhd_req *m) {
  free(m->target);
  dsysi_buf_free(&m->body);
  free(m);
}

static enum MHD_Result queue_buf(struct MHD_Connection *conn, int status,
                                 const char *ctype, const char *body,
                                 size_t len, int close) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (!resp) return MHD_NO;
  if (ctype) MHD_add_response_header(resp, "Content-Type", ctype);
  if (close) MHD_add_response_header(resp, "Connection", "close");
  enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return rc;
}

static enum MHD_Result queue_error(struct MHD_Connection *conn, int status,
                                   const char *code, const char *msg) {
  size_t len = 0;
  char *s = dsysi_error_json(code, msg, &len);
  if (!s) return MHD_NO;
  enum MHD_Result rc = queue_buf(conn, status, "application/json", s, len, 1);
  free(s);
  return rc;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
  mhd_req *m = cls;
  dsys_request *r = m->req;
  pthread_mutex_lock(&r->mu);
  size_t n = dsysi_request_stream_take(r, buf, max);
  ssize_t ret;
  if (n) ret = (ssize_t)n;
  else if (r->stream_ended) ret = MHD_CONTENT_READER_END_OF_STREAM;
  else if (r->abandoned || r->closed) ret = MHD_CONTENT_READER_END_WITH_ERROR;
  else {
    /* Nothing yet: park the connection; notify() resumes it. Returning 0
     * is only allowed together with a suspend (else MHD busy-loops). */
    m->suspended = 1;
    MHD_suspend_connection(m->conn);
    ret = 0;
  }
  pthread_mutex_unlock(&r->mu);
  return ret;
}

/* Called with r->mu held: queue the stored answer. */
static enum MHD_Result queue_answer(mhd_req *m) {
  dsys_request *r = m->req;
  struct MHD_Response *resp;
  if (r->state == DSYSI_RQ_STREAMING) {
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
                                             stream_reader, m, NULL);
  } else {
    resp = MHD_create_response_from_buffer(r->rlen, r->rbody,
                                           MHD_RESPMEM_MUST_FREE);
    if (resp) r->rbody = NULL; /* MHD frees it */
  }
  if (!resp) return MHD_NO;
  for (size_t i = 0; i < r->rhdrs.n; i++)
    if (!dsysi_streq_nocase(r->rhdrs.v[i].name, "Content-Length") &&
        !dsysi_streq_nocase(r->rhdrs.v[i].name, "Transfer-Encoding"))
      MHD_add_response_header(resp, r->rhdrs.v[i].name, r->rhdrs.v[i].value);
  if (r->ctype) MHD_add_response_header(resp, "Content-Type", r->ctype);
  if (r->state == DSYSI_RQ_STREAMING)
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
  enum MHD_Result rc = MHD_queue_response(m->conn, (unsigned)r->status, resp);
  MHD_destroy_response(resp);
  return rc;
}

/* After dispatch or a resume: answer if we can, else park the connection. */
static enum MHD_Result after_dispatch(mhd_req *m) {
  dsys_request *r = m->req;
  enum MHD_Result rc = MHD_YES;
  pthread_mutex_lock(&r->mu);
  if (r->state == DSYSI_RQ_ANSWERED || r->state == DSYSI_RQ_STREAMING) {
    r->status = r->status ? r->status : 500;
    rc = queue_answer(m);
  } else if (r->abandoned) {
    rc = queue_error(m->conn, 503, "DSYS_ESTOPPED", "Server is shutting down");
  } else {
    m->suspended = 1;
    MHD_suspend_connection(m->conn);
  }
  pthread_mutex_unlock(&r->mu);
  return rc;
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind,
                                      const char *key, const char *value) {
  dsys_request *r = cls;
  if (key)
    dsysi_hdrs_add(&r->hdrs, key, strlen(key), value ? value : "",
                   value ? strlen(value) : 0);
  return MHD_YES;
}

static void set_remote(mhd_req *m, dsys_request *r) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(m->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  r->raddr.ss_family = AF_UNIX;
  if (!ci || !ci->client_addr) return;
  size_t n = ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
             : ci->client_addr->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                      : sizeof(sa_family_t);
  memcpy(&r->raddr, ci->client_addr, n);
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn,
                                      const char *url, const char *method,
                                      const char *version,
                                      const char *upload_data,
                                      size_t *upload_size, void **con_cls) {
  mhd_lst *l = cls;
  mhd_req *m = *con_cls;
  if (!m) return MHD_NO; /* out of memory in uri_log */
  if (m->req) return after_dispatch(m); /* resumed */
  size_t max = dsysi_server_max_body(l->srv);
  if (!m->seen) {
    m->seen = 1;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > max)
      return queue_error(conn, 413, "DSYS_ETOOBIG", "Request body too large");
    return MHD_YES;
  }
  if (*upload_size) {
    if (!m->too_big) {
      if (m->body.len + *upload_size > max) {
        m->too_big = 1;
        dsysi_buf_free(&m->body);
      } else if (dsysi_buf_append(&m->body, upload_data, *upload_size)) {
        return MHD_NO;
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }
  if (m->too_big)
    return queue_error(conn, 413, "DSYS_ETOOBIG", "Request body too large");
  dsys_request *r = dsysi_request_new(l->srv, l->ops, l, m);
  if (!r) return MHD_NO;
  m->req = r;
  r->method = strdup(method);
  set_remote(m, r);
  MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, r);
  r->body = dsysi_buf_steal(&m->body, &r->body_len);
  int trc = dsysi_request_set_target(r, m->target);
  if (!r->method || !r->body || trc) {
    /* Answer through the normal path so accounting stays right. */
    if (!r->path) dsysi_request_set_target(r, "/");
    dsys_respond_error(r, 400, "DSYS_EURL", "Malformed request target");
    return after_dispatch(m);
  }
  dsysi_server_dispatch(r);
  return after_dispatch(m);
}

static void request_completed(void *cls, struct MHD_Connection *conn,
                              void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
  mhd_req *m = *con_cls;
  if (!m) return;
  if (m->req)
    dsysi_request_transport_done(m->req, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
  free_mreq(m);
  *con_cls = NULL;
}

static void notify(void *lst, dsys_request *r) {
  pthread_mutex_lock(&r->mu);
  if (!r->transport_done) {
    mhd_req *m = r->tctx;
    if (m->suspended) {
      m->suspended = 0;
      MHD_resume_connection(m->conn);
    }
  }
  pthread_mutex_unlock(&r->mu);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
  dsysi_buf b = {0};
  dsysi_buf_vprintf(&b, fmt, ap);
  while (b.len && (b.data[b.len - 1] == '\n')) b.data[--b.len] = '\0';
  if (!b.oom) dsysi_log(DSYS_LOG_WARN, "mhd", "%s", b.data);
  dsysi_buf_free(&b);
}

static int bind_socket(const char *url, int is_unix, mhd_lst *l) {
  int fd = -1;
  if (is_unix) {
    dsysi_url u;
    int rc = dsysi_url_parse(url, &u);
    if (rc) return rc;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(u.path) >= sizeof sa.sun_path) {
      dsysi_url_free(&u);
      return DSYS_EURL;
    }
    strcpy(sa.sun_path, u.path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      dsysi_url_free(&u);
      return DSYS_EIO;
    }
    /* A stale socket file from a dead process: remove it, but never steal
     * a path that a live server still answers on. */
    struct stat st;
    if (stat(sa.sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
      int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(probe);
        close(fd);
        dsysi_url_free(&u);
        return DSYS_EADDRINUSE;
      }
      if (probe >= 0) close(probe);
      unlink(sa.sun_path);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      int e = errno;
      close(fd);
      dsysi_url_free(&u);
      return e == EADDRINUSE ? DSYS_EADDRINUSE : e == EACCES ? DSYS_EPERM : DSYS_EIO;
    }
    l->unix_path = strdup(sa.sun_path);
    snprintf(l->url, sizeof l->url, "unix://%s", sa.sun_path);
    dsysi_url_free(&u);
  } else {
    dsysi_url u;
    int rc = dsysi_url_parse(url, &u);
    if (rc) return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", u.port);
    const char *host = u.host[0] ? u.host : NULL;
    if (host && !strcmp(host, "*")) host = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) {
      dsysi_url_free(&u);
      return DSYS_ERESOLVE;
    }
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      int e = errno;
      if (fd >= 0) close(fd);
      freeaddrinfo(ai);
      dsysi_url_free(&u);
      return e == EADDRINUSE ? DSYS_EADDRINUSE : e == EACCES ? DSYS_EPERM : DSYS_EIO;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    char ip[64] = "";
    int bport = 0;
    if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
      inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
      bport = ntohs(s6->sin6_port);
      snprintf(l->url, sizeof l->url, "http://[%s]:%d", ip, bport);
    } else {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
      inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
      bport = ntohs(s4->sin_port);
      snprintf(l->url, sizeof l->url, "http://%s:%d", ip, bport);
    }
    dsysi_url_free(&u);
  }
  if (listen(fd, 1024) != 0) {
    close(fd);
    return DSYS_EIO;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  l->fd = fd;
  return 0;
}

static int mhd_listen(dsys_server *srv, const char *url, void **out,
                      const dsys_transport_ops *ops, int is_unix) {
  mhd_lst *l = calloc(1, sizeof *l);
  if (!l) return DSYS_ENOMEM;
  l->srv = srv;
  l->ops = ops;
  l->fd = -1;
  int rc = bind_socket(url, is_unix, l);
  if (rc) {
    free(l->unix_path);
    free(l);
    return rc;
  }
  unsigned threads = dsysi_server_threads(srv);
  /* A pool of 1 is ignored with a warning (MHD-NOTES pitfall 6). */
  l->d = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG,
      0, NULL, NULL, access_handler, l,
      MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, l,
      MHD_OPTION_LISTEN_SOCKET, l->fd,
      MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(threads > 1 ? threads : 0),
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)dsysi_server_max_connections(srv),
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)dsysi_server_idle_timeout(srv),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)dsysi_server_connection_memory(srv),
      MHD_OPTION_NOTIFY_COMPLETED, request_completed, l,
      MHD_OPTION_URI_LOG_CALLBACK, uri_log, l,
      MHD_OPTION_END);
  if (!l->d) {
    close(l->fd);
    if (l->unix_path) unlink(l->unix_path);
    free(l->unix_path);
    free(l);
    return DSYS_EIO;
  }
  *out = l;
  return 0;
}

static int http_listen(dsys_server *srv, const char *url, void **out) {
  return mhd_listen(srv, url, out, &dsysi_http_ops, 0);
}

static int unix_listen(dsys_server *srv, const char *url, void **out) {
  return mhd_listen(srv, url, out, &dsysi_unix_ops, 1);
}

static const char *mhd_url(void *lst) { return ((mhd_lst *)lst)->url; }

static void mhd_quiesce(void *lst) {
  mhd_lst *l = lst;
  if (l->quiesced) return;
  l->quiesced = 1;
  MHD_socket fd = MHD_quiesce_daemon(l->d);
  if (fd != MHD_INVALID_SOCKET) close(fd);
  if (l->unix_path) unlink(l->unix_path);
}

static void mhd_close(void *lst) {
  mhd_lst *l = lst;
  mhd_quiesce(l);
  MHD_stop_daemon(l->d);
  free(l->unix_path);
  free(l);
}

/* Dialer functions live in http_client.c. */
int dsysi_curl_call(dsysi_call *call);
int dsysi_curl_call_sync(dsysi_call *call, dsys_reply **out);
void dsysi_curl_client_free(dsys_client *c);

const dsys_transport_ops dsysi_http_ops = {
    .version = DSYS_TRANSPORT_OPS_VERSION,
    .name = "http",
    .scheme = "http",
    .listen = http_listen,
    .url = mhd_url,
    .quiesce = mhd_quiesce,
    .notify = notify,
    .close = mhd_close,
    .call = dsysi_curl_call,
    .call_sync = dsysi_curl_call_sync,
    .client_free = dsysi_curl_client_free,
};

const dsys_transport_ops dsysi_unix_ops = {
    .version = DSYS_TRANSPORT_OPS_VERSION,
    .name = "unix",
    .scheme = "unix",
    .listen = unix_listen,
    .url = mhd_url,
    .quiesce = mhd_quiesce,
    .notify = notify,
    .close = mhd_close,
    .call = dsysi_curl_call,
    .call_sync = dsysi_curl_call_sync,
    .client_free = dsysi_curl_client_free,
};
