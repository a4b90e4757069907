/*
 * Saving a job's files under a connector's outputs folder (outputs.h).
 */
#include "outputs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
