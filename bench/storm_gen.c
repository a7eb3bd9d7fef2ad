/* The reconnect storm's load generator in C (bench/security_bench.py builds
 * and runs it): the Python generator costs more CPU per login than the broker
 * it measures, so it, not the broker, bounded the storm.
 *
 * Per site, exactly what security_bench._site does: TCP connect, TLS handshake
 * (the broker certificate checked against --ca unless it is omitted; no
 * session resumption: every site is a new client), SaslHandshake v1
 * (SCRAM-SHA-512), the two SaslAuthenticate v2 round trips with the site's
 * salted password (random client nonce; the server signature is checked),
 * then Metadata v12, which must list brokers; close. The request bytes are
 * built as the Python generator builds them (`--dump-frames` prints them so a
 * test can compare). `concurrency` threads with blocking sockets take sites
 * from a shared counter.
 *
 *   storm_gen --port N --sites FILE [--concurrency 100] [--ca PEM] [--host IP]
 *   storm_gen --dump-frames
 *
 * FILE: one site a line, "name hex-salted-password". Prints one JSON line:
 * {"logins", "failures", "seconds", "first_error"}.
 *
 * cc -O2 -o storm_gen storm_gen.c -lssl -lcrypto -lpthread
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED /* the ENGINE API, below */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#ifndef OPENSSL_NO_ENGINE
#include <openssl/engine.h>
#endif
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MECH "SCRAM-SHA-512"
#define CLIENT_ID "storm"
#define MAX_FRAME (1 << 20)

struct site {
    char *name;
    unsigned char salted[SHA512_DIGEST_LENGTH];
};

static struct site *sites;
static size_t n_sites;
static atomic_size_t next_site;
static atomic_size_t logins, failures;
static pthread_mutex_t error_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_error[512];
static SSL_CTX *ctx;
static struct sockaddr_in addr;
static const char *host = "127.0.0.1";
static int verify;

/* A login's failure: the message of the first one is kept for the report. */
struct fail {
    char msg[400];
};

static int failf(struct fail *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* A request frame as security_bench._frame builds it: size, header v1
 * (api key, version, correlation id, client id "storm"), for flexible
 * versions header v2's empty tag buffer, then the body. */
static size_t frame(unsigned char *out, int api_key, int version, int cid, const unsigned char *body,
                    size_t body_len, int flexible) {
    size_t n = 4;
    out[n++] = (unsigned char)(api_key >> 8);
    out[n++] = (unsigned char)api_key;
    out[n++] = (unsigned char)(version >> 8);
    out[n++] = (unsigned char)version;
    out[n++] = (unsigned char)(cid >> 24);
    out[n++] = (unsigned char)(cid >> 16);
    out[n++] = (unsigned char)(cid >> 8);
    out[n++] = (unsigned char)cid;
    out[n++] = 0;
    out[n++] = (unsigned char)strlen(CLIENT_ID);
    memcpy(out + n, CLIENT_ID, strlen(CLIENT_ID));
    n += strlen(CLIENT_ID);
    if (flexible)
        out[n++] = 0;
    memcpy(out + n, body, body_len);
    n += body_len;
    uint32_t size = htonl((uint32_t)(n - 4));
    memcpy(out, &size, 4);
    return n;
}

static unsigned char handshake_frame[64], metadata_frame[64];
static size_t handshake_len, metadata_len;

static void build_frames(void) {
    unsigned char body[32];
    size_t mech = strlen(MECH);
    body[0] = 0;
    body[1] = (unsigned char)mech;
    memcpy(body + 2, MECH, mech);
    handshake_len = frame(handshake_frame, 17, 1, 1, body, 2 + mech, 0);
    /* Metadata v12: no topics, no auto-creation, no authorized operations. */
    static const unsigned char md[] = {1, 0, 0, 0};
    metadata_len = frame(metadata_frame, 3, 12, 4, md, sizeof md, 1);
}

/* SaslAuthenticate v2 (flexible): compact bytes (unsigned varint of length
 * + 1), the message, the empty tag buffer. */
static size_t authenticate_frame(unsigned char *out, int cid, const char *msg, size_t len) {
    unsigned char body[1024];
    size_t n = 0, v = len + 1;
    if (v < 0x80) {
        body[n++] = (unsigned char)v;
    } else {
        body[n++] = (unsigned char)((v & 0x7F) | 0x80);
        body[n++] = (unsigned char)(v >> 7);
    }
    memcpy(body + n, msg, len);
    n += len;
    body[n++] = 0;
    return frame(out, 36, 2, cid, body, n, 1);
}

static void hex(const unsigned char *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
    printf("\n");
}

static const char *ssl_error(void) {
    static _Thread_local char buf[256];
    unsigned long e = ERR_get_error();
    if (e == 0)
        return errno ? strerror(errno) : "connection closed";
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

static int send_all(SSL *ssl, const unsigned char *b, size_t n, struct fail *f) {
    size_t done;
    if (SSL_write_ex(ssl, b, n, &done) != 1 || done != n)
        return failf(f, "TLS write: %s", ssl_error());
    return 0;
}

static int read_all(SSL *ssl, unsigned char *b, size_t n, struct fail *f) {
    size_t got = 0;
    while (got < n) {
        size_t r;
        errno = 0;
        if (SSL_read_ex(ssl, b + got, n - got, &r) != 1)
            return failf(f, "TLS read: %s", ssl_error());
        got += r;
    }
    return 0;
}

/* One answer's payload (correlation id onwards) into buf; its size or -1. */
static long answer(SSL *ssl, unsigned char *buf, size_t cap, struct fail *f) {
    unsigned char size_be[4];
    if (read_all(ssl, size_be, 4, f))
        return -1;
    uint32_t size;
    memcpy(&size, size_be, 4);
    size = ntohl(size);
    if (size < 5 || size > cap)
        return failf(f, "answer of %u bytes", size);
    if (read_all(ssl, buf, size, f))
        return -1;
    return (long)size;
}

static int uvarint(const unsigned char *b, size_t len, size_t *pos, uint32_t *out) {
    uint32_t v = 0;
    for (int shift = 0; shift < 35 && *pos < len; shift += 7) {
        unsigned char c = b[(*pos)++];
        v |= (uint32_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* One SaslAuthenticate round trip: the server's bytes (NUL-terminated) into
 * out, or the broker's error code and message as the failure. */
static int authenticate(SSL *ssl, int cid, const char *msg, char *out, size_t cap, struct fail *f) {
    unsigned char req[1100], resp[4096];
    size_t n = authenticate_frame(req, cid, msg, strlen(msg));
    if (send_all(ssl, req, n, f))
        return -1;
    long len = answer(ssl, resp, sizeof resp, f);
    if (len < 0)
        return -1;
    size_t pos = 5; /* correlation id, empty response-header tags */
    if ((size_t)len < pos + 3)
        return failf(f, "SaslAuthenticate answer too short");
    int error = (int16_t)((resp[pos] << 8) | resp[pos + 1]);
    pos += 2;
    uint32_t m, b;
    if (uvarint(resp, (size_t)len, &pos, &m) || pos + (m ? m - 1 : 0) > (size_t)len)
        return failf(f, "SaslAuthenticate answer malformed");
    const char *text = (const char *)resp + pos;
    int text_len = m ? (int)(m - 1) : 0;
    pos += (size_t)text_len;
    if (error)
        return failf(f, "SaslAuthenticate error %d: %.*s", error, text_len, text);
    if (uvarint(resp, (size_t)len, &pos, &b) || b == 0 || pos + b - 1 > (size_t)len || b > cap)
        return failf(f, "SaslAuthenticate answer malformed");
    memcpy(out, resp + pos, b - 1);
    out[b - 1] = 0;
    return 0;
}

static void hmac512(const unsigned char *key, size_t klen, const void *data, size_t n,
                    unsigned char *out) {
    unsigned int len = SHA512_DIGEST_LENGTH;
    HMAC(EVP_sha512(), key, (int)klen, data, n, out, &len);
}

/* The client-final message (without proof, proof) and the server signature
 * expected in the server-final message, as security_bench._client_final. */
static int scram_final(const struct site *s, const char *bare, const char *server_first, char *out,
                       size_t cap, char *expected_v, struct fail *f) {
    const char *r = strstr(server_first, "r=");
    if (r != server_first)
        return failf(f, "server-first without a nonce: %.80s", server_first);
    const char *nonce = bare + strlen(bare) - 24; /* the client nonce, last in bare */
    size_t rlen = strcspn(r + 2, ",");
    if (rlen <= 24 || rlen > 200 || strncmp(r + 2, nonce, 24) != 0)
        return failf(f, "server nonce does not extend the client's");
    unsigned char client_key[64], stored_key[64], server_key[64], sig[64], proof[64];
    hmac512(s->salted, 64, "Client Key", 10, client_key);
    SHA512(client_key, 64, stored_key);
    hmac512(s->salted, 64, "Server Key", 10, server_key);
    char without_proof[256];
    snprintf(without_proof, sizeof without_proof, "c=biws,r=%.*s", (int)rlen, r + 2);
    char auth[1024];
    int alen = snprintf(auth, sizeof auth, "%s,%s,%s", bare, server_first, without_proof);
    if (alen <= 0 || (size_t)alen >= sizeof auth)
        return failf(f, "server-first too long");
    hmac512(stored_key, 64, auth, (size_t)alen, sig);
    for (int i = 0; i < 64; i++)
        proof[i] = client_key[i] ^ sig[i];
    char p64[100];
    EVP_EncodeBlock((unsigned char *)p64, proof, 64);
    snprintf(out, cap, "%s,p=%s", without_proof, p64);
    hmac512(server_key, 64, auth, (size_t)alen, sig);
    memcpy(expected_v, "v=", 2);
    EVP_EncodeBlock((unsigned char *)expected_v + 2, sig, 64);
    return 0;
}

static int login(const struct site *s, struct fail *f) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), rc = -1;
    SSL *ssl = NULL;
    if (fd < 0)
        return failf(f, "socket: %s", strerror(errno));
    int one = 1;
    struct timeval tv = {30, 0};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        failf(f, "connect: %s", strerror(errno));
        goto out;
    }
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (verify)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    errno = 0;
    if (SSL_connect(ssl) != 1) {
        long v = SSL_get_verify_result(ssl);
        if (v != X509_V_OK)
            failf(f, "TLS handshake: certificate verify failed: %s",
                  X509_verify_cert_error_string(v));
        else
            failf(f, "TLS handshake: %s", ssl_error());
        goto out;
    }
    unsigned char buf[4096];
    if (send_all(ssl, handshake_frame, handshake_len, f))
        goto out;
    long len = answer(ssl, buf, sizeof buf, f);
    if (len < 0)
        goto out;
    if (buf[4] || buf[5]) {
        failf(f, "SaslHandshake error %02x%02x", buf[4], buf[5]);
        goto out;
    }
    unsigned char rnd[18];
    char nonce[32], bare[256], first[300], server_first[1024], final[512], expected_v[100];
    char server_final[256];
    RAND_bytes(rnd, sizeof rnd);
    EVP_EncodeBlock((unsigned char *)nonce, rnd, sizeof rnd); /* 24 characters */
    for (char *c = nonce; *c; c++) /* token_urlsafe's alphabet */
        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
    snprintf(bare, sizeof bare, "n=%s,r=%s", s->name, nonce);
    snprintf(first, sizeof first, "n,,%s", bare);
    if (authenticate(ssl, 2, first, server_first, sizeof server_first, f))
        goto out;
    if (scram_final(s, bare, server_first, final, sizeof final, expected_v, f))
        goto out;
    if (authenticate(ssl, 3, final, server_final, sizeof server_final, f))
        goto out;
    if (strcmp(server_final, expected_v) != 0) {
        failf(f, "server signature does not match: %.100s", server_final);
        goto out;
    }
    if (send_all(ssl, metadata_frame, metadata_len, f))
        goto out;
    len = answer(ssl, buf, sizeof buf, f);
    if (len < 0)
        goto out;
    size_t pos = 9; /* after correlation id, tags, throttle time */
    uint32_t brokers;
    if ((size_t)len <= pos || uvarint(buf, (size_t)len, &pos, &brokers) || brokers <= 1) {
        failf(f, "no brokers in the authenticated Metadata answer");
        goto out;
    }
    rc = 0;
out:
    if (ssl) {
        if (rc == 0)
            SSL_shutdown(ssl); /* close_notify, as the Python client's close */
        SSL_free(ssl);
    }
    close(fd);
    return rc;
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        size_t i = atomic_fetch_add(&next_site, 1);
        if (i >= n_sites)
            return NULL;
        struct fail f;
        if (login(&sites[i], &f) == 0) {
            atomic_fetch_add(&logins, 1);
        } else {
            atomic_fetch_add(&failures, 1);
            ERR_clear_error();
            pthread_mutex_lock(&error_lock);
            if (!first_error[0])
                snprintf(first_error, sizeof first_error, "%s: %s", sites[i].name, f.msg);
            pthread_mutex_unlock(&error_lock);
        }
    }
}

static void load_sites(const char *path) {
    FILE *in = fopen(path, "r");
    if (!in) {
        fprintf(stderr, "storm_gen: cannot open %s: %s\n", path, strerror(errno));
        exit(2);
    }
    size_t cap = 1024;
    sites = calloc(cap, sizeof *sites);
    char name[200], hexsp[200];
    while (fscanf(in, "%199s %199s", name, hexsp) == 2) {
        if (strlen(hexsp) != 128) {
            fprintf(stderr, "storm_gen: %s: salted password is not 64 bytes of hex\n", name);
            exit(2);
        }
        if (n_sites == cap)
            sites = realloc(sites, (cap *= 2) * sizeof *sites);
        sites[n_sites].name = strdup(name);
        for (int i = 0; i < 64; i++) {
            unsigned int b;
            if (sscanf(hexsp + 2 * i, "%2x", &b) != 1) {
                fprintf(stderr, "storm_gen: %s: salted password is not hex\n", name);
                exit(2);
            }
            sites[n_sites].salted[i] = (unsigned char)b;
        }
        n_sites++;
    }
    fclose(in);
}

/* OpenSSL 3.0 decodes the public key of every certificate it parses through
 * its provider decoders, building a decoder chain each time: 40% of this
 * client's CPU per login, and the same in any OpenSSL 3.0 client (the broker,
 * which parses no client certificate, does not pay it). With an engine
 * registered for EC and RSA keys, x509_pubkey_decode takes the legacy path
 * (the built-in ASN.1 decoder) instead, and signatures are checked by copies
 * of the built-in methods. Nothing the broker sees changes. */
#ifndef OPENSSL_NO_ENGINE
static EVP_PKEY_METHOD *legacy_ec, *legacy_rsa;

static int legacy_pkey_meths(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids, int nid) {
    static const int ids[] = {EVP_PKEY_EC, EVP_PKEY_RSA};
    (void)e;
    if (pmeth == NULL) {
        *nids = ids;
        return 2;
    }
    *pmeth = nid == EVP_PKEY_EC ? legacy_ec : nid == EVP_PKEY_RSA ? legacy_rsa : NULL;
    return *pmeth != NULL;
}

static EVP_PKEY_METHOD *copy_method(int id) {
    EVP_PKEY_METHOD *m = EVP_PKEY_meth_new(id, 0);
    const EVP_PKEY_METHOD *builtin = EVP_PKEY_meth_find(id);
    if (m == NULL || builtin == NULL)
        return NULL;
    EVP_PKEY_meth_copy(m, builtin);
    return m;
}

/* 0, or -1 when the engine cannot be set up (the generator then runs
 * without it: slower, still correct). */
static int legacy_key_decoding(void) {
    legacy_ec = copy_method(EVP_PKEY_EC);
    legacy_rsa = copy_method(EVP_PKEY_RSA);
    ENGINE *e = ENGINE_new();
    if (!legacy_ec || !legacy_rsa || !e || !ENGINE_set_id(e, "storm-legacy-keys") ||
        !ENGINE_set_name(e, "storm_gen: legacy public-key decoding") ||
        !ENGINE_set_pkey_meths(e, legacy_pkey_meths) || !ENGINE_register_pkey_meths(e))
        return -1;
    return 0;
}
#else
static int legacy_key_decoding(void) { return -1; }
#endif

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void usage(void) {
    fprintf(stderr, "usage: storm_gen --port N --sites FILE [--concurrency N] [--ca PEM] "
                    "[--host IP] | --dump-frames\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *sites_file = NULL, *ca = NULL;
    int port = 0, concurrency = 100;
    build_frames();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dump-frames")) {
            unsigned char buf[1100];
            hex(handshake_frame, handshake_len);
            hex(metadata_frame, metadata_len);
            const char *msg = "n,,n=plant-0,r=abcdefghijklmnopqrstuvwx";
            hex(buf, authenticate_frame(buf, 2, msg, strlen(msg)));
            return 0;
        } else if (i + 1 >= argc) {
            usage();
        } else if (!strcmp(argv[i], "--port")) {
            port = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--sites")) {
            sites_file = argv[++i];
        } else if (!strcmp(argv[i], "--concurrency")) {
            concurrency = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--ca")) {
            ca = argv[++i];
        } else if (!strcmp(argv[i], "--host")) {
            host = argv[++i];
        } else {
            usage();
        }
    }
    if (port <= 0 || port > 65535 || !sites_file || concurrency <= 0)
        usage();
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "storm_gen: --host %s is not an IPv4 address\n", host);
        return 2;
    }
    load_sites(sites_file);
    signal(SIGPIPE, SIG_IGN); /* a closed connection is a failed login, not the end */
    if (!getenv("STORM_GEN_NO_ENGINE") && legacy_key_decoding() != 0)
        fprintf(stderr, "storm_gen: legacy key decoding not available: %s\n", ssl_error());

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every site a new client */
    if (ca) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
            fprintf(stderr, "storm_gen: cannot load --ca %s: %s\n", ca, ssl_error());
            return 2;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        verify = 1;
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }

    if ((size_t)concurrency > n_sites)
        concurrency = n_sites ? (int)n_sites : 1;
    pthread_t *threads = calloc((size_t)concurrency, sizeof *threads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < concurrency; i++) {
        if (pthread_create(&threads[i], &attr, worker, NULL) != 0) {
            fprintf(stderr, "storm_gen: cannot start thread %d\n", i);
            return 2;
        }
    }
    for (int i = 0; i < concurrency; i++)
        pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("{\"logins\": %zu, \"failures\": %zu, \"seconds\": %.6f, \"first_error\": ",
           atomic_load(&logins), atomic_load(&failures), secs);
    if (first_error[0])
        json_string(first_error);
    else
        printf("null");
    printf("}\n");
    SSL_CTX_free(ctx);
    return 0;
}
