/*
 * dsys_events: in-process publish/subscribe with topics, bounded
 * per-subscriber queues, a small per-topic history for resuming, and
 * Server-Sent Events (SSE) output on a dsys_request.
 *
 * Every published event gets an id from one counter per hub, increasing by
 * one per event. By default the counter starts at the hub's creation time
 * in wall milliseconds times 1000, so the ids of a restarted process are
 * larger than the ones its previous run gave out (ids stay below 2^53 and
 * survive JavaScript's number type).
 *
 * Subscribers: each subscription has a queue of at most queue_len events.
 * Publishing never blocks and never waits for a subscriber: when a queue is
 * full, its OLDEST event is dropped and the subscription's drop counter
 * grows; dsys_events_next() reports how many were lost before the event it
 * returns. A subscriber is told about new events by its notify callback
 * (called after each event is queued, on the publisher's thread, with no
 * library lock held; several publisher threads may call it concurrently)
 * and takes them with dsys_events_next().
 *
 * Resume: the hub keeps the last `history` events of every topic. A
 * subscription opened with a last event id first receives the kept events
 * of its topics with a larger id, in id order. When the history no longer
 * reaches back to that id, dsys_events_resume_gap() says so (the exact
 * number of missed events is not kept).
 *
 * SSE: dsys_sse_encode() frames one event ("id:", "event:", one "data:"
 * line per line of the data; CR, LF and CRLF all end a line).
 * dsys_events_serve_sse() answers a request with a live event stream of
 * some topics: it honours the Last-Event-ID header, writes from the
 * publisher side, sends a heartbeat comment every heartbeat_ms (15 s by
 * default) so that proxies keep the stream open, and unsubscribes when the
 * client goes away (on_close or a failed write) or when
 * dsys_events_close_streams() ends every stream (call it before stopping
 * the server, so that a graceful stop is not held up by open streams).
 *
 * Thread-safety: every function may be called from any thread. Notify
 * callbacks may call any function of this header, including
 * dsys_events_unsubscribe() of their own subscription, but not
 * dsys_events_free(). After dsys_events_unsubscribe() returns, the
 * subscription's notify callback no longer runs (except that a callback
 * unsubscribing itself returns first).
 */
#ifndef DSYS_EVENTS_H
#define DSYS_EVENTS_H

#include <distsys/common.h>
#include <distsys/clock.h>
#include <distsys/server.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_events dsys_events;
typedef struct dsys_events_sub dsys_events_sub;

/** One published event (read-only). Returned by dsys_events_next(); keep it
 *  as long as needed and release it with dsys_event_release(). */
typedef struct dsys_event {
  uint64_t id;          /**< hub-wide, increasing */
  const char *topic;    /**< the topic it was published on */
  const char *name;     /**< event name (SSE "event:"), "" when none */
  const char *data;     /**< payload text, NUL-terminated */
  size_t len;           /**< payload length in bytes */
  int64_t wall_ms;      /**< publication time on the hub's clock */
} dsys_event;

/** Hub options. Zero fields take the defaults given. */
typedef struct dsys_events_options {
  size_t size;            /**< sizeof(dsys_events_options), or 0 */
  dsys_clock *clock;      /**< timestamps and SSE heartbeats; default real */
  uint32_t queue_len;     /**< per-subscriber queue bound, default 256 */
  uint32_t history;       /**< events kept per topic for resume, default 64 */
  int64_t heartbeat_ms;   /**< SSE heartbeat comment interval, default 15000 */
  uint64_t first_id;      /**< id of the first event; 0: wall ms * 1000 */
} dsys_events_options;

/** Called after an event was queued for the subscription (see above). */
typedef void (*dsys_events_notify_fn)(dsys_events_sub *sub, void *ud);

/**
 * Create a hub.
 * @param opts may be NULL.
 * @return 0, DSYS_EINVAL (out is NULL), DSYS_ENOMEM.
 */
DSYS_API int dsys_events_new(dsys_events **out, const dsys_events_options *opts);

/**
 * End every SSE stream (dsys_events_close_streams), then free the hub.
 * Every subscription made with dsys_events_subscribe() must have been
 * unsubscribed. Events still held by the application stay valid until
 * released. NULL-safe.
 */
DSYS_API void dsys_events_free(dsys_events *ev);

/**
 * Publish an event to every subscription of its topic and keep it in the
 * topic's history. Never blocks on subscribers.
 * @param topic non-empty, no CR/LF.
 * @param name event name or NULL; no CR, LF or NUL.
 * @param data payload (copied), may be NULL when len is 0; no NUL bytes.
 * @param id_out receives the event id (may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_events_publish(dsys_events *ev, const char *topic,
                                 const char *name, const char *data, size_t len,
                                 uint64_t *id_out);

/**
 * Subscribe to some topics.
 * @param topics ntopics topic names; ntopics 0 means every topic.
 * @param last_id 0, or the id of the last event already seen: kept events
 *        of these topics with a larger id are queued first (resume).
 * @param notify may be NULL (poll with dsys_events_next).
 * @param out receives the subscription.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM, DSYS_ESTOPPED (hub closing).
 */
DSYS_API int dsys_events_subscribe(dsys_events *ev, const char *const *topics,
                                   size_t ntopics, uint64_t last_id,
                                   dsys_events_notify_fn notify, void *ud,
                                   dsys_events_sub **out);

/**
 * Take the oldest queued event, without waiting.
 * @param out receives the event (release with dsys_event_release).
 * @param dropped receives how many events this subscription lost because
 *        its queue was full since the previous call (may be NULL; the count
 *        is reset only when it is reported).
 * @return 0, DSYS_EAGAIN (queue empty; *dropped is still reported),
 *         DSYS_EINVAL.
 */
DSYS_API int dsys_events_next(dsys_events_sub *sub, const dsys_event **out,
                              uint64_t *dropped);

/** Nonzero when the subscription asked to resume from an id that the
 *  topic history no longer reaches back to (events were missed). */
DSYS_API int dsys_events_resume_gap(const dsys_events_sub *sub);

/**
 * Stop a subscription: queued events are released and notify no longer
 * runs once this returns (it waits for running notify calls of this
 * subscription on other threads). NULL-safe.
 */
DSYS_API void dsys_events_unsubscribe(dsys_events_sub *sub);

/** Release an event returned by dsys_events_next(). NULL-safe. */
DSYS_API void dsys_event_release(const dsys_event *e);

/** Number of events published so far and number dropped from full
 *  subscriber queues (for tests and metrics). */
DSYS_API void dsys_events_counters(dsys_events *ev, uint64_t *published,
                                   uint64_t *dropped);

/**
 * Frame one event as Server-Sent Events text:
 * "id: <id>\n" (when id != 0), "event: <name>\n" (when name is non-empty),
 * one "data: <line>\n" per line of data (at least one), then "\n".
 * @param out receives the text (NUL-terminated), released with dsys_free().
 * @param outlen receives its length (may be NULL).
 * @return 0, DSYS_EINVAL (CR, LF or NUL in name), DSYS_ENOMEM.
 */
DSYS_API int dsys_sse_encode(uint64_t id, const char *name, const char *data,
                             size_t len, char **out, size_t *outlen);

typedef struct dsys_sse_stream dsys_sse_stream;

/** Called once per new SSE stream, after the response started and before
 *  any subscribed event is written: write per-connection events with
 *  dsys_sse_send (e.g. a snapshot of the current state). */
typedef void (*dsys_sse_open_fn)(dsys_sse_stream *st, dsys_request *req, void *ud);

/** Answers of a dsys_sse_filter_fn. */
enum {
  DSYS_SSE_SKIP = 0,      /**< do not write this event */
  DSYS_SSE_WRITE = 1,     /**< write it */
  DSYS_SSE_WRITE_END = 2  /**< write it, then end the stream */
};

/** Per-stream event filter: called (with the stream's write lock held, so
 *  it must not call functions of this header) for every subscribed event
 *  before it is written; returns DSYS_SSE_SKIP, DSYS_SSE_WRITE or
 *  DSYS_SSE_WRITE_END. */
typedef int (*dsys_sse_filter_fn)(const dsys_event *e, void *filter_ud);

/** Options of dsys_events_serve_sse. Zero fields take the defaults. */
typedef struct dsys_sse_options {
  size_t size;               /**< sizeof(dsys_sse_options), or 0 */
  dsys_sse_open_fn on_open;  /**< may be NULL */
  void *ud;                  /**< for on_open */
  /* appended (issue 7, streams): */
  dsys_sse_filter_fn filter; /**< may be NULL (write every event) */
  void *filter_ud;           /**< for filter and filter_free */
  /** Called once when the stream is gone and filter no longer runs (also
   *  when dsys_events_serve_sse fails); may be NULL. */
  void (*filter_free)(void *filter_ud);
} dsys_sse_options;

/**
 * Answer req with a live Server-Sent Events stream of some topics (call in
 * the handler, or after dsys_request_defer). The resume id comes from the
 * Last-Event-ID header, else from a "lastEventId" query parameter. Events
 * lost from the connection's queue are announced by an event named
 * "dropped" with data {"dropped":N}; a resume gap by an event named
 * "resume-gap". The stream ends when the client goes away, when a write
 * fails, or at dsys_events_close_streams(); the request is finished by the
 * library in every case.
 * @param topics, ntopics as for dsys_events_subscribe.
 * @param o may be NULL.
 * @return 0 (the request belongs to the stream now); on an error the
 *         request was answered with an error status (503 when the hub is
 *         closing): DSYS_EINVAL, DSYS_ENOMEM, DSYS_ESTOPPED, DSYS_ECLOSED.
 */
DSYS_API int dsys_events_serve_sse(dsys_events *ev, dsys_request *req,
                                   const char *const *topics, size_t ntopics,
                                   const dsys_sse_options *o);

/**
 * Write one event to a single SSE stream (not published, not kept for
 * resume). Only valid inside the stream's on_open callback.
 * @param id 0 for none.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM, DSYS_ECLOSED.
 */
DSYS_API int dsys_sse_send(dsys_sse_stream *st, uint64_t id, const char *name,
                           const char *data, size_t len);

/**
 * End the stream once on_open returns (e.g. the snapshot already is the
 * final state). Only valid inside the stream's on_open callback.
 * @return 0, DSYS_EINVAL (NULL, or not inside on_open).
 */
DSYS_API int dsys_sse_end(dsys_sse_stream *st);

/** Number of SSE streams open right now. */
DSYS_API size_t dsys_events_stream_count(dsys_events *ev);

/**
 * End every open SSE stream now, and refuse new ones (503) and new
 * subscriptions from then on. Publishing still works. NULL-safe.
 */
DSYS_API void dsys_events_close_streams(dsys_events *ev);

#ifdef __cplusplus
}
#endif
#endif
