/*
 * JSON answers and request bodies of the service modules (reply.c).
 * Thread-safety: as the request they are given.
 */
#ifndef DSYSI_SERVICES_REPLY_H
#define DSYSI_SERVICES_REPLY_H

#include <distsys/server.h>
#include <json-c/json.h>

/** Respond with a JSON object (consumes one reference of obj). */
int dsysi_respond_obj(dsys_request *req, int status, json_object *obj);

/** Respond {"error": msg, "code": code}. */
int dsysi_respond_err(dsys_request *req, int status, const char *code,
                      const char *msg);

/**
 * Parse the request body as a JSON object. An empty body counts as {}.
 * On failure responds 400 (malformed JSON or not an object) and returns
 * nonzero; on success *out owns one reference.
 */
int dsysi_body_object(dsys_request *req, json_object **out);

#endif
