/*
 * libdistsys: resilient HTTP microservices in C. This umbrella header
 * includes every public header.
 */
#ifndef DSYS_DISTSYS_H
#define DSYS_DISTSYS_H

#include <distsys/common.h>
#include <distsys/log.h>
#include <distsys/clock.h>
#include <distsys/util.h>
#include <distsys/config.h>
#include <distsys/server.h>
#include <distsys/client.h>
#include <distsys/store.h>
#include <distsys/queue.h>
#include <distsys/lock.h>
#include <distsys/cache.h>
#include <distsys/breaker.h>
#include <distsys/balancer.h>
#include <distsys/retry.h>
#include <distsys/health.h>
#include <distsys/registry.h>
#include <distsys/auth.h>
#include <distsys/services.h>
#include <distsys/upstream.h>
#include <distsys/gateway.h>
#include <distsys/registry_service.h>
#include <distsys/registration.h>
#include <distsys/events.h>
#include <distsys/faultd.h>
#include <distsys/metrics.h>
#include <distsys/identity.h>

#endif
