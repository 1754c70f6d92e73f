package secretref

import (
	"errors"
	"strings"
)

// AWS Secrets Manager names: 1-512 characters of A-Z a-z 0-9 / _ + = . @ -.
// The "@" is allowed by AWS but refused here when it could be read as
// userinfo; Parse already refuses "@" in any locator.
const maxAWSName = 512

func awsLocator(p string) error {
	if p == "" {
		return errorf("locator", "is empty")
	}
	if strings.HasPrefix(p, "arn:") {
		_, err := parseARN(p)
		return err
	}
	if len(p) > maxAWSName {
		return errorf("locator", "is %d bytes long; AWS allows %d", len(p), maxAWSName)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/_+=.-", c) >= 0) {
			if c == ':' {
				return errorf("locator", `has ":" but is not an ARN (arn:aws:secretsmanager:...)`)
			}
			return errorf("locator", "has a character AWS does not allow in secret names at byte %d", i+1)
		}
	}
	for i, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return errorf("locator", `segment %d is %q: relative segments are not allowed`, i+1, seg)
		}
		if err := checkComponentNotSecret("locator", seg); err != nil {
			return err
		}
	}
	return nil
}

type arn struct {
	partition, region, account, name string
}

// parseARN checks arn:<partition>:secretsmanager:<region>:<account>:secret:<name>.
func parseARN(s string) (arn, error) {
	parts := strings.SplitN(s, ":", 7)
	if len(parts) != 7 {
		return arn{}, errorf("locator", "ARN must have the form arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME")
	}
	a := arn{partition: parts[1], region: parts[3], account: parts[4], name: parts[6]}
	switch a.partition {
	case "aws", "aws-cn", "aws-us-gov":
	default:
		return arn{}, errorf("locator", "ARN partition must be aws, aws-cn or aws-us-gov")
	}
	if parts[2] != "secretsmanager" {
		return arn{}, errorf("locator", "ARN service must be secretsmanager")
	}
	if err := awsRegion(a.region); err != nil {
		return arn{}, errorf("locator", "ARN region %v", err)
	}
	if len(a.account) != 12 || strings.Trim(a.account, "0123456789") != "" {
		return arn{}, errorf("locator", "ARN account must be 12 digits")
	}
	if parts[5] != "secret" {
		return arn{}, errorf("locator", `ARN resource type must be "secret"`)
	}
	if a.name == "" || strings.Contains(a.name, ":") {
		return arn{}, errorf("locator", "ARN secret name is empty or has \":\"")
	}
	if err := awsLocator(a.name); err != nil {
		return arn{}, err
	}
	return a, nil
}

// awsVersionID: AWS version ids are UUIDs; accept 32-64 of [A-Za-z0-9-],
// and of those not in the UUID shape, nothing that looks like a secret.
func awsVersionID(v string) error {
	if len(v) < 32 || len(v) > 64 {
		return errors.New("must be an AWS version id (32 to 64 characters, usually a UUID)")
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return errors.New("must hold only letters, digits and \"-\"")
		}
	}
	if uuidShaped(v) {
		return nil
	}
	if f, secret := DetectLiteral(v); secret {
		return errors.New("looks like a secret value (" + f.Kind + "), not a version id")
	}
	return nil
}

// uuidShaped: 8-4-4-4-12 letters and digits, as AWS writes version ids
// (its documentation's examples included).
func uuidShaped(v string) bool {
	if len(v) != 36 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if dash := i == 8 || i == 13 || i == 18 || i == 23; dash != (v[i] == '-') {
			return false
		}
	}
	return true
}

// awsStage: AWSCURRENT, AWSPENDING, AWSPREVIOUS or a custom label (1-256
// characters of A-Z a-z 0-9 _ . -; AWS allows more, we keep labels boring).
func awsStage(v string) error {
	if len(v) > 256 {
		return errors.New("is longer than 256 characters")
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return errors.New("must hold only letters, digits, \"_\", \".\" and \"-\"")
		}
	}
	if f, secret := DetectLiteral(v); secret {
		return errors.New("looks like a secret value (" + f.Kind + "), not a stage label")
	}
	return nil
}

// awsRegion: lower-case words joined by "-" ending in a number, e.g.
// us-east-1, eu-west-2, us-gov-west-1, cn-north-1, ap-southeast-3.
func awsRegion(v string) error {
	parts := strings.Split(v, "-")
	if len(parts) < 3 || len(v) > 32 {
		return errors.New("must look like us-east-1")
	}
	for i, p := range parts {
		if p == "" {
			return errors.New("must look like us-east-1")
		}
		last := i == len(parts)-1
		for j := 0; j < len(p); j++ {
			c := p[j]
			if last && !(c >= '0' && c <= '9') || !last && !(c >= 'a' && c <= 'z') {
				return errors.New("must look like us-east-1")
			}
		}
	}
	return nil
}

func awsCross(r Ref) error {
	if strings.HasPrefix(r.Path, "arn:") && r.Region != "" {
		a, err := parseARN(r.Path)
		if err != nil {
			return err
		}
		if a.region != r.Region {
			return errorf("param region", "differs from the ARN's region")
		}
	}
	return nil
}
