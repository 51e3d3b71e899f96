# Image for the compose `garage-init` job: the official Garage image is FROM
# scratch (just the static /garage binary, no shell), so copy that binary
# next to a busybox shell that can run init.sh.
ARG GARAGE_IMAGE=dxflrs/garage:v2.4.1
FROM ${GARAGE_IMAGE} AS garage

FROM busybox:1.36
COPY --from=garage /garage /usr/local/bin/garage
ENTRYPOINT ["/bin/sh"]
