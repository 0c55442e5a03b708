/*
 * An independent tunnel client built on libwebsockets (Debian's libwebsockets-dev): dials the relay's
 * tunnel endpoint as a connector would (TLS, websocket upgrade with subprotocol relay-tunnel.v1 and
 * the connector's identity headers), and reports what happened on stdout:
 *
 *   established: the relay accepted the upgrade
 *   preface: the relay's first bytes are the HTTP/2 connection preface (the tunnel is live)
 *   refused: <status> <libwebsockets' reason>       the relay answered the upgrade with that status
 *
 * Used by EndToEndTests (InteropTests). Exit 0 once the preface arrived, 2 when refused, 1 otherwise.
 *
 *   lws_tunnel_client HOST PORT CA_FILE CLUSTER NODE [CREDENTIAL]
 */
#include <libwebsockets.h>
#include <stdio.h>
#include <string.h>

static const char *cluster, *node, *credential;
static int outcome = 1;
static int done;

static int add_header(struct lws *wsi, const char *name, const char *value, unsigned char **p, unsigned char *end) {
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)value, (int)strlen(value), p, end);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
        unsigned char **p = (unsigned char **)in, *end = (*p) + len;
        char bearer[4096];
        if (add_header(wsi, "x-relay-cluster:", cluster, p, end) || add_header(wsi, "x-relay-node:", node, p, end)) return -1;
        if (credential) {
            snprintf(bearer, sizeof bearer, "Bearer %s", credential);
            if (add_header(wsi, "authorization:", bearer, p, end)) return -1;
        }
        break;
    }
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        printf("established\n");
        fflush(stdout);
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (len >= 24 && memcmp(in, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24) == 0) {
            printf("preface: the relay opened HTTP/2 over the tunnel (%zu bytes)\n", len);
            outcome = 0;
        } else {
            printf("received %zu bytes that are not an HTTP/2 preface\n", len);
        }
        done = 1;
        return -1;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        printf("refused: %u %s\n", wsi ? lws_http_client_http_response(wsi) : 0, in ? (const char *)in : "(no reason)");
        outcome = 2;
        done = 1;
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        done = 1;
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"relay-tunnel.v1", callback, 0, 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT CA_FILE CLUSTER NODE [CREDENTIAL]\n", argv[0]);
        return 64;
    }
    cluster = argv[4];
    node = argv[5];
    credential = argc > 6 ? argv[6] : NULL;
    lws_set_log_level(LLL_ERR, NULL);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.client_ssl_ca_filepath = argv[3];
    struct lws_context *context = lws_create_context(&info);
    if (!context) return 1;

    struct lws_client_connect_info connect;
    memset(&connect, 0, sizeof connect);
    connect.context = context;
    connect.address = argv[1];
    connect.port = atoi(argv[2]);
    connect.path = "/v1/tunnel";
    connect.host = argv[1];
    connect.origin = argv[1];
    connect.protocol = "relay-tunnel.v1";
    connect.ssl_connection = LCCSCF_USE_SSL;
    if (!lws_client_connect_via_info(&connect)) {
        printf("refused: 0 could not start the connection\n");
        lws_context_destroy(context);
        return 1;
    }
    for (int turns = 0; !done && turns < 300; turns++) lws_service(context, 100);
    lws_context_destroy(context);
    return outcome;
}
