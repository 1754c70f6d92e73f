package secretref

import "strings"

// FromCloudFormation converts a CloudFormation dynamic reference to Secrets
// Manager,
//
//	{{resolve:secretsmanager:secret-id:SecretString:json-key:version-stage:version-id}}
//
// into a Ref. Trailing fields may be omitted and empty fields mean the
// default; secret-id may be a name or a full ARN.
func FromCloudFormation(s string) (Ref, error) {
	const prefix, suffix = "{{resolve:secretsmanager:", "}}"
	if !strings.HasPrefix(s, prefix) || !strings.HasSuffix(s, suffix) {
		return Ref{}, errorf("cloudformation", "must have the form {{resolve:secretsmanager:secret-id:SecretString:json-key:version-stage:version-id}}")
	}
	body := s[len(prefix) : len(s)-len(suffix)]
	var id string
	if strings.HasPrefix(body, "arn:") {
		parts := strings.SplitN(body, ":", 8)
		if len(parts) < 7 {
			return Ref{}, errorf("cloudformation", "secret-id ARN is incomplete")
		}
		id = strings.Join(parts[:7], ":")
		body = ""
		if len(parts) == 8 {
			body = parts[7]
		}
	} else {
		id, body, _ = strings.Cut(body, ":")
	}
	fields := []string{}
	if body != "" {
		fields = strings.Split(body, ":")
	}
	if len(fields) > 4 {
		return Ref{}, errorf("cloudformation", "has more fields than secret-id:SecretString:json-key:version-stage:version-id")
	}
	for len(fields) < 4 {
		fields = append(fields, "")
	}
	if fields[0] != "" && fields[0] != "SecretString" {
		return Ref{}, errorf("cloudformation", `the second field must be "SecretString"`)
	}
	r := Ref{Scheme: SchemeAWSSM, Path: id, Field: fields[1], Stage: fields[2], Version: fields[3]}
	if err := r.Validate(); err != nil {
		return Ref{}, err
	}
	return r, nil
}

// FromExternalSecrets converts an External Secrets Operator remote ref
// {key, property, version} into a Ref of the given scheme. ESO's AWS
// provider reads a version that starts with "uuid/" as a version id and any
// other version as a staging label; its Vault provider reads it as the KV
// version number. Both conventions are kept.
func FromExternalSecrets(scheme, key, property, version string) (Ref, error) {
	r := Ref{Scheme: Scheme(strings.ToLower(scheme)), Path: key, Field: property}
	if version != "" {
		if r.Scheme == SchemeAWSSM {
			if id, ok := strings.CutPrefix(version, "uuid/"); ok {
				r.Version = id
			} else {
				r.Stage = version
			}
		} else {
			r.Version = version
		}
	}
	if err := r.Validate(); err != nil {
		return Ref{}, err
	}
	return r, nil
}
