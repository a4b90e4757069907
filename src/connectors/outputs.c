/*
 * Output files of the API connectors (contract in outputs.h).
 */
#include "outputs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Checks the outputs folder (contract in outputs.h). */
int kiln_outputs_check_dir(const kiln_connector_config_t *cfg, const char *dir, kiln_err_t *err)
{
    struct stat st;
    if (dir[0] != '/')
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.outputs_dir: expected an absolute path, got \"%s\"",
                            cfg->name, dir);
    if (stat(dir, &st) != 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.outputs_dir: %s: %s; create the folder", cfg->name, dir,
                            strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.outputs_dir: %s is not a folder; give a folder",
                            cfg->name, dir);
    if (access(dir, W_OK | X_OK) != 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.outputs_dir: %s is not writable: %s; fix its "
                            "permissions",
                            cfg->name, dir, strerror(errno));
    return 0;
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ENAMETOOLONG;
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return errno;
        if (!(*p = saved))
            break;
    }
    return 0;
}

/* Reads a folder option (contract in outputs.h). */
int kiln_outputs_option_dir(const kiln_connector_config_t *cfg, const char *key, const char *def,
                            bool create, char **out, kiln_err_t *err)
{
    const char *dir;
    int rc = kiln_connector_option_string(cfg, key, &dir, err);
    if (rc < 0 || !(dir = dir ? dir : def))
        return rc;
    int e = create ? mkdir_p(dir) : 0;
    char resolved[PATH_MAX];
    struct stat sb;
    if (!e && (!realpath(dir, resolved) || stat(resolved, &sb) < 0))
        e = errno;
    if (!e && !S_ISDIR(sb.st_mode))
        e = ENOTDIR;
    if (!e && create && access(resolved, W_OK | X_OK) < 0)
        e = errno;
    if (e)
        return kiln_err_set(err, KILN_EINVAL, "connectors.%s.%s: \"%s\": %s; expected a %sfolder",
                            cfg->name, key, dir, strerror(e), create ? "writable " : "");
    *out = strdup(resolved);
    return *out ? 0 : kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
}

/* Decodes base64 text (contract in outputs.h). */
unsigned char *kiln_outputs_decode_base64(const char *text, size_t len, size_t *out_len)
{
    if (len == 0 || len % 4 != 0 || len > INT_MAX)
        return NULL;
    unsigned char *bytes = malloc(len / 4 * 3 + 1);
    if (!bytes)
        return NULL;
    int n = EVP_DecodeBlock(bytes, (const unsigned char *)text, (int)len);
    if (n < 0) {
        free(bytes);
        return NULL;
    }
    size_t pad = (text[len - 1] == '=') + (text[len - 2] == '=');
    *out_len = (size_t)n - pad;
    return bytes;
}

void kiln_outputs_safe_name(const char *name, const char *fallback, char *out, size_t size)
{
    if (!size)
        return;
    snprintf(out, size, "%s", name && name[0] ? name : fallback);
    for (char *p = out; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            *p = '_';
    if (out[0] == '.')
        out[0] = '_';
}

static const char *image_extension(const unsigned char *b, size_t n)
{
    if (n >= 8 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "png";
    if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return "jpg";
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return "webp";
    return "bin";
}

int kiln_outputs_write_file(const char *path, const void *bytes, size_t len, char *why,
                            size_t why_size)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(why, why_size, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, (const char *)bytes + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, why_size, "writing %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        done += (size_t)n;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        snprintf(why, why_size, "saving %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Saves one output file of a job (contract in outputs.h). */
int kiln_outputs_save(const char *outputs_dir, const char *job_id, const char *stem, size_t index,
                      const unsigned char *bytes, size_t len, char **path_out, char *why,
                      size_t why_size)
{
    char dir[PATH_MAX], id[128], path[PATH_MAX];
    kiln_outputs_safe_name(job_id, "job", id, sizeof id);
    snprintf(dir, sizeof dir, "%s/%s", outputs_dir, id);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(why, why_size, "cannot create %s: %s", dir, strerror(errno));
        return KILN_EIO;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/%s-%zu.%s", dir, stem, index,
                         image_extension(bytes, len)) >= sizeof path - 4) {
        snprintf(why, why_size, "the path under %s is too long", dir);
        return KILN_EINVAL;
    }
    if (kiln_outputs_write_file(path, bytes, len, why, why_size) < 0)
        return KILN_EIO;
    if (!(*path_out = strdup(path))) {
        snprintf(why, why_size, "out of memory");
        return KILN_ENOMEM;
    }
    return 0;
}
