package awsfake_test

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"

	"github.com/secretplane/secretplane/internal/awsfake"
)

func client(t *testing.T, url string) *secretsmanager.Client {
	t.Helper()
	awsfake.Credentials(t)
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	cfg, err := awsconfig.LoadDefaultConfig(context.Background(), awsconfig.WithRegion("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	return secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) { o.BaseEndpoint = aws.String(url) })
}

func code(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

const tok = "0123456789abcdef0123456789abcdef"

// Labels move as AWS documents; calls are recorded with their stage
// arguments; faults fail every call, or the next one only.
func TestFake(t *testing.T) {
	ctx := context.Background()
	f, srv := awsfake.New(t)
	c := client(t, srv.URL)
	v1 := f.Put("s", "one")
	if got := f.Stages("s"); !reflect.DeepEqual(got, map[string][]string{v1: {"AWSCURRENT"}}) {
		t.Fatalf("first version: %v", got)
	}
	steps := []struct {
		name string
		call func() error
		want string // error code, "" for success
	}{
		{"stage", func() error {
			_, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("s"), SecretString: aws.String("two"),
				ClientRequestToken: aws.String(tok), VersionStages: []string{"AWSPENDING"}})
			return err
		}, ""},
		{"stage again, same value", func() error {
			_, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("s"), SecretString: aws.String("two"),
				ClientRequestToken: aws.String(tok), VersionStages: []string{"AWSPENDING"}})
			return err
		}, ""},
		{"stage again, another value", func() error {
			_, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("s"), SecretString: aws.String("three"),
				ClientRequestToken: aws.String(tok), VersionStages: []string{"AWSPENDING"}})
			return err
		}, "ResourceExistsException"},
		{"move AWSCURRENT without naming its holder", func() error {
			_, err := c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{SecretId: aws.String("s"),
				VersionStage: aws.String("AWSCURRENT"), MoveToVersionId: aws.String(tok)})
			return err
		}, "InvalidParameterException"},
		{"move AWSCURRENT", func() error {
			_, err := c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{SecretId: aws.String("s"),
				VersionStage: aws.String("AWSCURRENT"), MoveToVersionId: aws.String(tok), RemoveFromVersionId: aws.String(v1)})
			return err
		}, ""},
		{"remove AWSPENDING", func() error {
			_, err := c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{SecretId: aws.String("s"),
				VersionStage: aws.String("AWSPENDING"), RemoveFromVersionId: aws.String(tok)})
			return err
		}, ""},
		{"read by ARN", func() error {
			out, err := c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(awsfake.ARN("s"))})
			if err == nil && aws.ToString(out.SecretString) != "two" {
				return errors.New("read " + aws.ToString(out.SecretString))
			}
			return err
		}, ""},
		{"read AWSPENDING", func() error {
			_, err := c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("s"), VersionStage: aws.String("AWSPENDING")})
			return err
		}, "ResourceNotFoundException"},
	}
	for _, s := range steps {
		if got := code(s.call()); got != s.want {
			t.Fatalf("%s: %q, want %q", s.name, got, s.want)
		}
	}
	if got := f.Stages("s"); !reflect.DeepEqual(got, map[string][]string{tok: {"AWSCURRENT"}, v1: {"AWSPREVIOUS"}}) {
		t.Fatalf("after the steps: %v", got)
	}
	if n := len(f.Versions("s")); n != 2 {
		t.Fatalf("%d versions, want 2", n)
	}
	var got []string
	for _, c := range f.Calls() {
		if c.Writes() {
			got = append(got, c.String())
		}
	}
	want := []string{
		"PutSecretValue stages=[AWSPENDING] token=" + tok,
		"PutSecretValue stages=[AWSPENDING] token=" + tok,
		"PutSecretValue stages=[AWSPENDING] token=" + tok,
		"UpdateSecretVersionStage AWSCURRENT move=" + tok,
		"UpdateSecretVersionStage AWSCURRENT move=" + tok + " remove=" + v1,
		"UpdateSecretVersionStage AWSPENDING remove=" + tok,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("writes:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	f.ResetCalls()
	describe := func() string {
		_, err := c.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("s")})
		return code(err)
	}
	f.FailNext("DescribeSecret", http.StatusBadRequest, "AccessDeniedException")
	if a, b := describe(), describe(); a != "AccessDeniedException" || b != "" {
		t.Fatalf("FailNext: %q then %q", a, b)
	}
	f.Fail("DescribeSecret", http.StatusInternalServerError, "InternalServiceError")
	if a, b := describe(), describe(); a != "InternalServiceError" || b != "InternalServiceError" {
		t.Fatalf("Fail: %q then %q", a, b)
	}
	f.Fail("DescribeSecret", 0, "")
	var seen []string
	f.OnCall(func(c awsfake.Call) { seen = append(seen, c.Op) })
	if got := describe(); got != "" {
		t.Fatalf("served again: %q", got)
	}
	f.OnCall(nil)
	if n := len(f.Calls()); n != 5 || !slices.Equal(seen, []string{"DescribeSecret"}) {
		t.Fatalf("%d calls recorded, hook saw %v", n, seen)
	}
	if !f.Attach("s", "AWSCURRENT", v1) || f.Holder("s", "AWSPREVIOUS") != tok || f.Attach("s", "AWSCURRENT", "nope") {
		t.Fatalf("Attach: %v", f.Stages("s"))
	}

	// Unsigned requests are refused.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion("us-east-1"), awsconfig.WithCredentialsProvider(aws.AnonymousCredentials{}))
	if err != nil {
		t.Fatal(err)
	}
	anon := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	if _, err := anon.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("s")}); code(err) != "UnrecognizedClientException" {
		t.Fatalf("unsigned: %v", err)
	}
}
