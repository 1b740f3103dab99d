/*
 * JSON answers and request bodies of the service modules (reply.c).
 * Thread-safety: as the request they are given.
 */
#ifndef DSYSI_SERVICES_REPLY_H
#define DSYSI_SERVICES_REPLY_H

#include <stdint.h>
#include <distsys/server.h>
#include <json-c/json.h>

/** Respond with a JSON object (consumes one reference of obj). */
int dsysi_respond_obj(dsys_request *req, int status, json_object *obj);

/** Respond {"error": msg, "code": code}. */
int dsysi_respond_err(dsys_request *req, int status, const char *code,
                      const char *msg);

/** 1 when this process answered "storage full" (507) within the last
 *  within_ms: /health reports it, the fault detector alerts on it. */
int dsysi_storage_full_recently(int64_t within_ms);

/**
 * Answer a storage failure (store or queue) with the status that says whose
 * fault it is: 507 DSYS_ENOSPC (storage full), 503 with Retry-After for a
 * lock held by another process (DSYS_EBUSY), 503 with Retry-After for a
 * database server that is down or too slow (DSYS_EUNAVAIL, DSYS_ETIMEDOUT),
 * 503 for a read-only or failing storage (DSYS_EPERM, DSYS_EIO) and for
 * DSYS_ENOMEM, else 500 with the
 * error's name. what names the operation ("Storage error", "Could not
 * queue the job"), first in the message.
 */
int dsysi_respond_storage_err(dsys_request *req, int rc, const char *what);

/**
 * Parse the request body as a JSON object. An empty body counts as {}.
 * On failure responds 400 (malformed JSON or not an object) and returns
 * nonzero; on success *out owns one reference.
 */
int dsysi_body_object(dsys_request *req, json_object **out);

#endif
