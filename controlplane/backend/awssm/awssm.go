// Package awssm reads and writes AWS Secrets Manager secrets for
// secretplane through the AWS SDK for Go v2: by version stage or version
// id, with JSON key extraction, region and endpoint from configuration and
// credentials from the SDK's default chain (never from secretplane's own
// configuration).
package awssm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// Config configures the backend.
type Config struct {
	Region   string // default region (a ref's region= overrides it)
	Endpoint string // custom endpoint (VPC endpoint, tests); default AWS's
}

// Backend is the AWS Secrets Manager backend.
type Backend struct {
	client *secretsmanager.Client
}

var _ backend.Backend = (*Backend)(nil)

// New loads the SDK's default configuration (environment, shared files,
// web identity, instance roles) and returns the backend.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	opts := []func(*awsconfig.LoadOptions) error{}
	if cfg.Region != "" {
		opts = append(opts, awsconfig.WithRegion(cfg.Region))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws-sm: load AWS configuration: %w", err)
	}
	client := secretsmanager.NewFromConfig(awsCfg, func(o *secretsmanager.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return &Backend{client: client}, nil
}

// Scheme implements backend.Backend.
func (b *Backend) Scheme() secretref.Scheme { return secretref.SchemeAWSSM }

func regionFor(ref secretref.Ref) func(*secretsmanager.Options) {
	return func(o *secretsmanager.Options) {
		if ref.Region != "" {
			o.Region = ref.Region
		}
	}
}

// Read implements backend.Backend.
func (b *Backend) Read(ctx context.Context, ref secretref.Ref) (backend.Value, error) {
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref.Path)}
	if ref.Version != "" {
		in.VersionId = aws.String(ref.Version)
	}
	if ref.Stage != "" {
		in.VersionStage = aws.String(ref.Stage)
	}
	out, err := b.client.GetSecretValue(ctx, in, regionFor(ref))
	if err != nil {
		return backend.Value{}, fmt.Errorf("%s: %w", ref, classify(err))
	}
	var raw []byte
	switch {
	case out.SecretString != nil:
		raw = []byte(*out.SecretString)
	case out.SecretBinary != nil:
		raw = out.SecretBinary
	}
	var data []byte
	if ref.Field == "" {
		data, err = backend.SelectField(ref, nil, raw)
	} else {
		var doc map[string]any
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			return backend.Value{}, fmt.Errorf("%s: the secret is not a JSON object, so it has no key to select: %w", ref, backend.ErrInvalidValue)
		}
		data, err = backend.SelectField(ref, doc, raw)
	}
	if err != nil {
		return backend.Value{}, err
	}
	v := backend.Value{Data: append([]byte(nil), data...), Version: aws.ToString(out.VersionId)}
	if out.CreatedDate != nil {
		v.CreatedAt = *out.CreatedDate
	}
	return v, nil
}

// Describe implements backend.Backend.
func (b *Backend) Describe(ctx context.Context, ref secretref.Ref) (backend.Metadata, error) {
	out, err := b.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(ref.Path)}, regionFor(ref))
	if err != nil {
		return backend.Metadata{}, fmt.Errorf("%s: %w", ref, classify(err))
	}
	md := backend.Metadata{Versions: len(out.VersionIdsToStages)}
	for id, stages := range out.VersionIdsToStages {
		for _, s := range stages {
			if s == "AWSCURRENT" {
				md.Version = id
			}
		}
	}
	if out.CreatedDate != nil {
		md.CreatedAt = *out.CreatedDate
	}
	if out.LastChangedDate != nil {
		md.UpdatedAt = *out.LastChangedDate
	}
	return md, nil
}

// Write implements backend.Backend: PutSecretValue makes a new AWSCURRENT
// version (AWS moves AWSPREVIOUS). With a field, the other JSON keys of the
// current version are kept.
func (b *Backend) Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error) {
	if err := backend.CheckWrite(ref); err != nil {
		return "", err
	}
	value := string(data)
	if ref.Field != "" {
		if strings.HasPrefix(ref.Field, "/") {
			return "", fmt.Errorf("%s: writing through a JSON pointer is not supported: %w", ref, backend.ErrInvalidValue)
		}
		doc := map[string]any{}
		cur, err := b.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref.Path)}, regionFor(ref))
		if err == nil && cur.SecretString != nil {
			if err := json.Unmarshal([]byte(*cur.SecretString), &doc); err != nil {
				return "", fmt.Errorf("%s: the current value is not a JSON object: %w", ref, backend.ErrInvalidValue)
			}
		} else if err != nil && !errors.Is(classify(err), backend.ErrNotFound) {
			return "", fmt.Errorf("%s: %w", ref, classify(err))
		}
		doc[ref.Field] = value
		raw, err := json.Marshal(doc)
		if err != nil {
			return "", err
		}
		value = string(raw)
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	out, err := b.client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId:           aws.String(ref.Path),
		SecretString:       aws.String(value),
		ClientRequestToken: aws.String(hex.EncodeToString(token)),
	}, regionFor(ref))
	if err != nil {
		return "", fmt.Errorf("%s: %w", ref, classify(err))
	}
	return aws.ToString(out.VersionId), nil
}

// classify maps AWS errors to backend errors. AWS messages name secrets
// and versions, never values.
func classify(err error) error {
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "ResourceNotFoundException":
			return fmt.Errorf("%w (aws-sm: %s)", backend.ErrNotFound, api.ErrorCode())
		case "AccessDeniedException", "DecryptionFailure", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException":
			return fmt.Errorf("%w (aws-sm: %s)", backend.ErrPermissionDenied, api.ErrorCode())
		case "InvalidRequestException", "InvalidParameterException":
			return fmt.Errorf("%w (aws-sm: %s: %s)", backend.ErrNotFound, api.ErrorCode(), api.ErrorMessage())
		default:
			return fmt.Errorf("%w (aws-sm: %s)", backend.ErrUnavailable, api.ErrorCode())
		}
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
}
