// Package awssm reads and writes AWS Secrets Manager secrets for
// secretplane through the AWS SDK for Go v2: by version stage or version
// id, with JSON key extraction, region and endpoint from configuration and
// credentials from the SDK's default chain (never from secretplane's own
// configuration).
//
// Besides Write (a new AWSCURRENT version at once), the backend is a
// backend.Stager and follows the contract AWS documents for rotation
// functions:
//
//   - Stage (createSecret) puts the new value as a version labelled
//     AWSPENDING only, so readers of AWSCURRENT still get the old one. Its
//     VersionId is derived from the caller's token (see StagedVersionID),
//     which makes PutSecretValue idempotent: staging again with the same
//     token returns the version already there and never makes a second one.
//   - Staged finds that version again after a crash (DescribeSecret).
//   - Promote (finishSecret) moves AWSCURRENT to the version; AWS moves
//     AWSPREVIOUS to the version that was current, and the AWSPENDING label
//     is then removed. Promoting the AWSPREVIOUS version is a rollback.
//
// setSecret and testSecret, AWS's middle steps, are the caller's: it
// changes the protected service and verifies the pending value in between.
package awssm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
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

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Stager  = (*Backend)(nil)
)

// The staging labels AWS Secrets Manager's rotation contract uses.
const (
	stageCurrent = "AWSCURRENT"
	stagePending = "AWSPENDING" // AWS keeps AWSPREVIOUS itself
)

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
			if s == stageCurrent {
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

// DefaultKMSKey is the alias of the KMS key AWS manages for Secrets
// Manager, used when a secret is created without a customer key.
const DefaultKMSKey = "alias/aws/secretsmanager"

// EncryptionKey describes ref's secret (DescribeSecret: metadata only,
// never the value) and returns the KMS key that encrypts it, as
// DescribeSecret's KmsKeyId names it (a key id, key ARN or alias ARN), or
// "" when AWS's managed key for Secrets Manager (DefaultKMSKey) is used:
// AWS omits KmsKeyId then. Like Describe, it proves the ref reachable.
func (b *Backend) EncryptionKey(ctx context.Context, ref secretref.Ref) (string, error) {
	out, err := b.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(ref.Path)}, regionFor(ref))
	if err != nil {
		return "", fmt.Errorf("%s: %w", ref, classify(err))
	}
	return aws.ToString(out.KmsKeyId), nil
}

// IsDefaultKMSKey reports whether keyID, as EncryptionKey returns it, is
// AWS's managed key for Secrets Manager rather than a customer key: empty,
// the alias, or the alias's ARN.
func IsDefaultKMSKey(keyID string) bool {
	return keyID == "" || keyID == DefaultKMSKey || strings.HasSuffix(keyID, ":"+DefaultKMSKey)
}

// Write implements backend.Backend: PutSecretValue makes a new AWSCURRENT
// version (AWS moves AWSPREVIOUS). With a field, the other JSON keys of the
// current version are kept.
func (b *Backend) Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error) {
	if err := backend.CheckWrite(ref); err != nil {
		return "", err
	}
	value, err := b.newValue(ctx, ref, data)
	if err != nil {
		return "", err
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	out, err := b.client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId:           aws.String(ref.Path),
		SecretString:       aws.String(value),
		ClientRequestToken: aws.String(hex.EncodeToString(token)),
	}, regionFor(ref))
	if err != nil {
		return "", fmt.Errorf("%s: write a new version: %w", ref, classify(err))
	}
	return aws.ToString(out.VersionId), nil
}

// newValue returns the SecretString a write of data at ref stores: data
// itself, or, with a field, the AWSCURRENT JSON document with that key set
// (the other keys kept, numbers as written; a secret with no version yet
// starts an empty document).
func (b *Backend) newValue(ctx context.Context, ref secretref.Ref, data []byte) (string, error) {
	if ref.Field == "" {
		return string(data), nil
	}
	if strings.HasPrefix(ref.Field, "/") {
		return "", fmt.Errorf("%s: writing through a JSON pointer is not supported: %w", ref, backend.ErrInvalidValue)
	}
	doc := map[string]any{}
	cur, err := b.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref.Path)}, regionFor(ref))
	switch {
	case err != nil && !errors.Is(classify(err), backend.ErrNotFound):
		return "", fmt.Errorf("%s: read the current value to set the field in: %w", ref, classify(err))
	case err == nil && (cur.SecretString != nil || cur.SecretBinary != nil):
		raw := cur.SecretBinary
		if cur.SecretString != nil {
			raw = []byte(*cur.SecretString)
		}
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.UseNumber() // keep 12345678901234567890 as written, not as a float64
		if err := dec.Decode(&doc); err != nil || dec.More() || doc == nil {
			return "", fmt.Errorf("%s: the current value is not a JSON object: %w", ref, backend.ErrInvalidValue)
		}
	}
	doc[ref.Field] = string(data)
	raw, err := json.Marshal(doc) // keys sorted: the same input makes the same value
	if err != nil {
		return "", fmt.Errorf("%s: encode the JSON document: %w", ref, backend.ErrInvalidValue)
	}
	return string(raw), nil
}

// StagedVersionID returns the VersionId (and PutSecretValue
// ClientRequestToken) Stage uses for token: the first 16 bytes of
// SHA-256("secretplane/aws-sm/stage\x00" + token) in UUID form (version 8,
// RFC 9562), 36 characters, within the 32 to 64 AWS allows. A hash, because
// AWS logs the ClientRequestToken in CloudTrail and the token is the
// caller's; deterministic, because a rotation resumed after a crash must
// find its version again. Changing it would orphan staged versions.
func StagedVersionID(token string) string {
	sum := sha256.Sum256([]byte("secretplane/aws-sm/stage\x00" + token))
	u := sum[:16]
	u[6] = u[6]&0x0f | 0x80 // version 8
	u[8] = u[8]&0x3f | 0x80 // variant 10
	h := hex.EncodeToString(u)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Stage implements backend.Stager (the createSecret step of AWS's rotation
// contract): PutSecretValue with VersionStages [AWSPENDING], so AWSCURRENT
// stays where it is, and ClientRequestToken StagedVersionID(token), which
// becomes the VersionId. AWS moves AWSPENDING from any other version. When a
// version with that id exists already (AWS answers with it for the same
// value, ResourceExistsException for another: a resumed rotation generated
// a new value), it is the staged one and is returned as is: a token never
// makes a second version. With a field, the other JSON keys of the current
// version are kept, as in Write.
func (b *Backend) Stage(ctx context.Context, ref secretref.Ref, data []byte, token string) (string, error) {
	if err := backend.CheckWrite(ref); err != nil {
		return "", err
	}
	if token == "" {
		return "", fmt.Errorf("%s: stage: no idempotency token: %w", ref, backend.ErrInvalidValue)
	}
	value, err := b.newValue(ctx, ref, data)
	if err != nil {
		return "", err
	}
	id := StagedVersionID(token)
	out, err := b.client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId:           aws.String(ref.Path),
		SecretString:       aws.String(value),
		ClientRequestToken: aws.String(id),
		VersionStages:      []string{stagePending},
	}, regionFor(ref))
	var api smithy.APIError
	switch {
	case errors.As(err, &api) && api.ErrorCode() == "ResourceExistsException":
		return id, nil // staged before, with another value: that version stays the staged one
	case err != nil:
		return "", fmt.Errorf("%s: stage version %s as %s: %w", ref, id, stagePending, classify(err))
	}
	if v := aws.ToString(out.VersionId); v != "" && v != id {
		return "", fmt.Errorf("%s: stage version %s: AWS answered with version %s: %w", ref, id, v, backend.ErrUnavailable)
	}
	return id, nil
}

// Staged implements backend.Stager: the version Stage made for token, when
// DescribeSecret lists it (AWS lists versions that still carry a label:
// staged, promoted or previous), else "".
func (b *Backend) Staged(ctx context.Context, ref secretref.Ref, token string) (string, error) {
	if token == "" {
		return "", fmt.Errorf("%s: staged: no idempotency token: %w", ref, backend.ErrInvalidValue)
	}
	stages, err := b.versionStages(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("%s: look for the staged version: %w", ref, err)
	}
	id := StagedVersionID(token)
	if _, ok := stages[id]; ok {
		return id, nil
	}
	return "", nil
}

// Promote implements backend.Stager (the finishSecret step of AWS's
// rotation contract): UpdateSecretVersionStage moves AWSCURRENT from the
// current version to version (AWS moves AWSPREVIOUS to the one it leaves),
// then AWSPENDING is removed from version. When version is current already
// (a promotion finished before, or interrupted before the AWSPENDING
// removal), only a leftover AWSPENDING is removed. A version DescribeSecret
// does not list (unknown, or deprecated: no label left, so AWS may delete
// it) is backend.ErrNotFound. If AWSCURRENT moves between the
// DescribeSecret and the move, AWS refuses the move (RemoveFromVersionId no
// longer matches) and nothing changes: the error is AWS's
// InvalidParameterException, which classify maps to backend.ErrNotFound.
func (b *Backend) Promote(ctx context.Context, ref secretref.Ref, version string) error {
	if err := backend.CheckWrite(ref); err != nil {
		return err
	}
	if version == "" {
		return fmt.Errorf("%s: promote: no version: %w", ref, backend.ErrInvalidValue)
	}
	stages, err := b.versionStages(ctx, ref)
	if err != nil {
		return fmt.Errorf("%s: promote %s: find the current version: %w", ref, version, err)
	}
	if _, ok := stages[version]; !ok {
		// AWS lists the versions that carry a label; one without any is
		// deprecated and AWS may delete it at any time.
		return fmt.Errorf("%s: promote %s: no such version carries a label: %w", ref, version, backend.ErrNotFound)
	}
	current := ""
	for id, ss := range stages {
		if slices.Contains(ss, stageCurrent) {
			current = id
		}
	}
	if current != version {
		in := &secretsmanager.UpdateSecretVersionStageInput{
			SecretId:        aws.String(ref.Path),
			VersionStage:    aws.String(stageCurrent),
			MoveToVersionId: aws.String(version),
		}
		if current != "" {
			in.RemoveFromVersionId = aws.String(current)
		}
		if _, err := b.client.UpdateSecretVersionStage(ctx, in, regionFor(ref)); err != nil {
			return fmt.Errorf("%s: promote %s: move %s from %s: %w", ref, version, stageCurrent, current, classify(err))
		}
	}
	if slices.Contains(stages[version], stagePending) {
		_, err := b.client.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
			SecretId:            aws.String(ref.Path),
			VersionStage:        aws.String(stagePending),
			RemoveFromVersionId: aws.String(version),
		}, regionFor(ref))
		if err != nil {
			return fmt.Errorf("%s: promote %s: remove %s from it: %w", ref, version, stagePending, classify(err))
		}
	}
	return nil
}

// Invalidate implements backend.Invalidator for an emergency rotation:
// every label is taken off the version (AWSPREVIOUS, usually), so that no
// stage names it: Secrets Manager treats a version without labels as
// deprecated and deletes it in time. Until then it can still be read by
// its id, which the rotation's status says. The current version is never
// invalidated.
func (b *Backend) Invalidate(ctx context.Context, ref secretref.Ref, version string) error {
	if err := backend.CheckWrite(ref); err != nil {
		return err
	}
	stages, err := b.versionStages(ctx, ref)
	if err != nil {
		return fmt.Errorf("%s: invalidate %s: %w", ref, version, err)
	}
	if slices.Contains(stages[version], stageCurrent) {
		return fmt.Errorf("%s: invalidate %s: it is %s: %w", ref, version, stageCurrent, backend.ErrInvalidValue)
	}
	for _, st := range stages[version] {
		_, err := b.client.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
			SecretId:            aws.String(ref.Path),
			VersionStage:        aws.String(st),
			RemoveFromVersionId: aws.String(version),
		}, regionFor(ref))
		if err != nil {
			return fmt.Errorf("%s: invalidate %s: remove %s from it: %w", ref, version, st, classify(err))
		}
	}
	return nil
}

// versionStages returns DescribeSecret's VersionIdsToStages: the labels of
// every version that has one.
func (b *Backend) versionStages(ctx context.Context, ref secretref.Ref) (map[string][]string, error) {
	out, err := b.client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(ref.Path)}, regionFor(ref))
	if err != nil {
		return nil, classify(err)
	}
	return out.VersionIdsToStages, nil
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
