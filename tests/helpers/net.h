/* Small socket helpers shared by the tests that talk raw HTTP. */
#ifndef DSYS_TEST_NET_H
#define DSYS_TEST_NET_H

/** The port of a URL such as http://127.0.0.1:PORT (0 if none). */
int test_port_of(const char *url);

/** A TCP socket connected to 127.0.0.1 at url's port, or -1. The socket
 *  may be made before the connect (fd >= 0): then it is used. */
int test_connect(const char *url);

/** As test_connect, on an already made socket fd: 0 or -1. */
int test_connect_fd(int fd, const char *url);

/** As test_connect, with receives bounded by recv_timeout_s seconds. */
int test_connect_timeout(const char *url, int recv_timeout_s);

/** A port on 127.0.0.1 that was free a moment ago (bound, read, closed):
 *  a connect to it is refused. 0 on failure. */
int test_free_port(void);

/** A slow client: connects to url, sends head (a request cut off inside a
 *  header), then one byte every step_ms. @return the milliseconds after
 *  which the server closed the connection, -1 when it was still open
 *  after max_ms, -2 when it could not connect. */
int test_trickle(const char *url, const char *head, int step_ms, int max_ms);

#endif
