package jobs

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3UploadTimeout bounds the upload of one output.
const s3UploadTimeout = 10 * time.Minute

// s3Store uploads job outputs to S3-compatible storage and presigns a GET
// URL for each, so back ends can hand results to their own users without
// routing the bytes through comfygate again.
type s3Store struct {
	client *minio.Client
	cfg    config.S3
}

// newS3Store returns nil when cfg names no endpoint. Credentials come from
// the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, else
// MINIO_ROOT_USER / MINIO_ROOT_PASSWORD).
func newS3Store(cfg config.S3) (*s3Store, error) {
	if cfg.Endpoint == "" {
		return nil, nil
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{&credentials.EnvAWS{}, &credentials.EnvMinio{}})
	c, err := minio.New(cfg.Endpoint, &minio.Options{Creds: creds, Secure: !cfg.Insecure, Region: cfg.Region})
	if err != nil {
		return nil, fmt.Errorf("jobs.s3: %w", err)
	}
	return &s3Store{client: c, cfg: cfg}, nil
}

// key is the object key of a job's n-th output.
func (st *s3Store) key(jobID string, n int, filename string) string {
	return st.cfg.Prefix + jobID + "/" + strconv.Itoa(n) + "-" + path.Base(filename)
}

// put uploads f as the job's n-th output and returns its key and a
// presigned GET URL.
func (st *s3Store) put(ctx context.Context, jobID string, n int, f *outputFile) (key, url string, err error) {
	r, err := f.open()
	if err != nil {
		return "", "", err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(ctx, s3UploadTimeout)
	defer cancel()
	key = st.key(jobID, n, f.ref.Filename)
	if _, err := st.client.PutObject(ctx, st.cfg.Bucket, key, r, f.size, minio.PutObjectOptions{ContentType: f.contentType}); err != nil {
		return "", "", fmt.Errorf("upload %s to S3: %w", key, err)
	}
	u, err := st.client.PresignedGetObject(ctx, st.cfg.Bucket, key, st.cfg.PresignExpiry, nil)
	if err != nil {
		return key, "", fmt.Errorf("presign %s: %w", key, err)
	}
	return key, u.String(), nil
}
